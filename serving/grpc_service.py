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
            try:
                return handler.predict(request, api="grpc")
            except status.ServingStatusError as e:
                _LOG.debug("Predict failed: %s", e)
                _abort(context, e)

        def Classify(self, request, context):  # noqa: N802
            try:
                return handler.classify(request, api="grpc")
            except status.ServingStatusError as e:
                _LOG.debug("Classify failed: %s", e)
                _abort(context, e)

        def Regress(self, request, context):  # noqa: N802
            try:
                return handler.regress(request, api="grpc")
            except status.ServingStatusError as e:
                _LOG.debug("Regress failed: %s", e)
                _abort(context, e)

        def MultiInference(self, request, context):  # noqa: N802
            try:
                return handler.multi_inference(request, api="grpc")
            except status.ServingStatusError as e:
                _LOG.debug("MultiInference failed: %s", e)
                _abort(context, e)

        def GetModelMetadata(self, request, context):  # noqa: N802
            try:
                return handler.get_model_metadata(request)
            except status.ServingStatusError as e:
                _LOG.debug("GetModelMetadata failed: %s", e)
                _abort(context, e)

    class ModelService(p.model_service_pb2_grpc.ModelServiceServicer):
        """GetModelStatus and HandleReloadConfigRequest."""

        def GetModelStatus(self, request, context):  # noqa: N802
            try:
                return handler.get_model_status(request)
            except status.ServingStatusError as e:
                _abort(context, e)

        def HandleReloadConfigRequest(self, request, context):  # noqa: N802
            if reload_config is None:
                return super().HandleReloadConfigRequest(request, context)
            try:
                return reload_config(request)
            except status.ServingStatusError as e:
                _abort(context, e)

    p.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    p.model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
