"""gRPC servicers for ``tensorflow.serving.PredictionService`` and ``ModelService``.

HandleReloadConfigRequest is served when the server passes ``reload_config``
(otherwise it answers UNIMPLEMENTED, the generated base class's behaviour).
"""

import logging

import grpc

from serving import protos, status

_LOG = logging.getLogger(__name__)


def _abort(context, error: status.ServingStatusError):
    context.abort(error.code, error.message)


def _answer(what: str, call, request, context):
    """Runs one API call; its status error becomes the RPC's status. Anything else is
    a server bug: logged with its stack, answered INTERNAL without internals (gRPC's
    default would send the exception's text as UNKNOWN)."""
    try:
        return call(request)
    except status.ServingStatusError as e:
        _LOG.debug("%s failed: %s", what, e)
        return _abort(context, e)
    except Exception:  # pylint: disable=broad-except
        _LOG.exception("%s failed", what)
        return context.abort(grpc.StatusCode.INTERNAL, status.INTERNAL_ERROR_TEXT)


def add_services(server: grpc.Server, handler, reload_config=None) -> None:
    """Registers the PredictionService and ModelService on a gRPC server.

    Args:
        server: the gRPC server.
        handler: the :class:`serving.prediction.ApiHandler`.
        reload_config: ``ReloadConfigRequest -> ReloadConfigResponse`` raising
            ``status.ServingStatusError`` (see ``ModelServer.handle_reload_config_request``);
            None answers HandleReloadConfigRequest UNIMPLEMENTED.
    """
    p = protos.load()

    class PredictionService(p.prediction_service_pb2_grpc.PredictionServiceServicer):
        """Predict, Classify, Regress, MultiInference and GetModelMetadata."""

        def Predict(self, request, context):  # noqa: N802 (gRPC method name)
            return _answer("Predict", lambda r: handler.predict(r, api="grpc"), request, context)

        def Classify(self, request, context):  # noqa: N802
            return _answer("Classify", lambda r: handler.classify(r, api="grpc"), request, context)

        def Regress(self, request, context):  # noqa: N802
            return _answer("Regress", lambda r: handler.regress(r, api="grpc"), request, context)

        def MultiInference(self, request, context):  # noqa: N802
            return _answer("MultiInference", lambda r: handler.multi_inference(r, api="grpc"), request, context)

        def GetModelMetadata(self, request, context):  # noqa: N802
            return _answer("GetModelMetadata", handler.get_model_metadata, request, context)

    class ModelService(p.model_service_pb2_grpc.ModelServiceServicer):
        """GetModelStatus and HandleReloadConfigRequest."""

        def GetModelStatus(self, request, context):  # noqa: N802
            return _answer("GetModelStatus", handler.get_model_status, request, context)

        def HandleReloadConfigRequest(self, request, context):  # noqa: N802
            if reload_config is None:
                return super().HandleReloadConfigRequest(request, context)
            try:
                return reload_config(request)
            except status.ServingStatusError as e:
                _abort(context, e)

    p.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    p.model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
