"""gRPC servicers for ``tensorflow.serving.PredictionService`` and ``ModelService``.

Regress, MultiInference and HandleReloadConfigRequest are not implemented and
answer UNIMPLEMENTED (the generated base classes' behaviour).
"""

import logging

import grpc

from serving import protos, status

_LOG = logging.getLogger(__name__)


def _abort(context, error: status.ServingStatusError):
    context.abort(error.code, error.message)


def add_services(server: grpc.Server, handler) -> None:
    """Registers the PredictionService and ModelService on a gRPC server.

    Args:
        server: the gRPC server.
        handler: the :class:`serving.prediction.ApiHandler`.
    """
    p = protos.load()

    class PredictionService(p.prediction_service_pb2_grpc.PredictionServiceServicer):
        """Predict, Classify and GetModelMetadata."""

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

        def GetModelMetadata(self, request, context):  # noqa: N802
            try:
                return handler.get_model_metadata(request)
            except status.ServingStatusError as e:
                _LOG.debug("GetModelMetadata failed: %s", e)
                _abort(context, e)

    class ModelService(p.model_service_pb2_grpc.ModelServiceServicer):
        """GetModelStatus."""

        def GetModelStatus(self, request, context):  # noqa: N802
            try:
                return handler.get_model_status(request)
            except status.ServingStatusError as e:
                _abort(context, e)

    p.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    p.model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
