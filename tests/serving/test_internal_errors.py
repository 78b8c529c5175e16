"""A bug inside the server reaches clients as INTERNAL / 500 without its text or stack.

The API handler and model manager here raise on purpose (a server bug that a
real model cannot be made to trigger); the gRPC server and REST dispatcher are
the real ones.
"""

import json
from concurrent import futures

import grpc
import pytest

from serving import grpc_service, protos, rest, status
from serving_fixtures import free_port

SECRET = 'File "/srv/app/serving/prediction.py", line 12: boom'


class _BrokenHandler:
    """Every API call fails with an unexpected exception."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise RuntimeError(SECRET)
        return fail


class _BrokenManager:
    def resolve(self, spec):
        raise KeyError(SECRET)


@pytest.fixture()
def grpc_target():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    grpc_service.add_services(server, _BrokenHandler())
    port = free_port()
    server.add_insecure_port(f"localhost:{port}")
    server.start()
    yield f"localhost:{port}"
    server.stop(grace=None)


@pytest.mark.parametrize("method", ["Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata"])
def test_grpc_unexpected_exception_is_internal_without_details(grpc_target, method):
    p = protos.load()
    requests = {"Predict": p.predict_pb2.PredictRequest, "Classify": p.classification_pb2.ClassificationRequest,
                "Regress": p.regression_pb2.RegressionRequest,
                "MultiInference": p.inference_pb2.MultiInferenceRequest,
                "GetModelMetadata": p.get_model_metadata_pb2.GetModelMetadataRequest}
    with grpc.insecure_channel(grpc_target) as channel:
        stub = p.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            getattr(stub, method)(requests[method](), timeout=10)

    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == status.INTERNAL_ERROR_TEXT


@pytest.mark.parametrize("verb, body", [("predict", {"instances": [1.0]}),
                                        ("classify", {"examples": [{"x": 1.0}]}),
                                        ("regress", {"examples": [{"x": 1.0}]})])
def test_rest_unexpected_exception_is_500_without_details(verb, body):
    api = rest.RestApi(_BrokenHandler(), _BrokenManager())

    code, content_type, raw = api.handle("POST", f"/v1/models/m:{verb}", json.dumps(body).encode())

    assert (code, content_type) == (500, "application/json")
    assert json.loads(raw) == {"error": status.INTERNAL_ERROR_TEXT}
