"""TensorFlow Serving's own test cases, replayed over gRPC and REST.

Requests, expected values and expected error texts come from upstream
(tensorflow/serving), each case citing the file and test it is taken from:

* ``tensorflow_serving/model_servers/tensorflow_model_server_test.py`` (model server test),
* ``tensorflow_serving/model_servers/http_rest_api_handler_test.cc`` (REST handler test),
* ``tensorflow_serving/servables/tensorflow/multi_inference_test.cc``,
* ``tensorflow_serving/util/json_tensor.cc`` and ``g3doc/api_rest.md`` (JSON rules and texts),
* ``servables/tensorflow/{predict_util,classifier,regressor}.cc`` (error texts).

The models are upstream's test SavedModels in ``../shared/testdata/tfserving``
(the module skips without them), served as upstream's tests name them:
``default`` (saved_model_half_plus_two_cpu), ``half_plus_three``,
``half_plus_two_tf2`` and ``saved_model_half_plus_two_2_versions`` (specific
version 123). ``typed_inputs`` is our own small model with int32 and bool
inputs (written by :func:`write_typed_model`), for the dtype rules.

Test names start with their group (predict, classify, regress,
multi_inference, status, json, errors). To run the cases against a real
TensorFlow Serving, serve those five models under those names and set
``KOA_SERVING_TARGET`` (gRPC host:port) and ``KOA_SERVING_REST_URL``.
"""

import json
import os
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from serving_fixtures import REPO_ROOT, start_server

TESTDATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "testdata", "tfserving")
TWO_VERSIONS = "saved_model_half_plus_two_2_versions"
REGRESS = "tensorflow/serving/regress"
CLASSIFY = "tensorflow/serving/classify"

pytestmark = pytest.mark.skipif(not os.path.isdir(TESTDATA),
                                reason=f"TensorFlow Serving's test models are not in {TESTDATA}")


def write_typed_model(path: str) -> str:
    """Writes a SavedModel with signatures ``int32`` (``n`` -> ``n`` + 1) and
    ``bool`` (``flag`` -> not ``flag``), both [batch]."""
    import tensorflow as tf

    class Typed(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
        def increment(self, n):
            return {"m": n + 1}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.bool)])
        def negate(self, flag):
            return {"negated": tf.logical_not(flag)}

    module = Typed()
    tf.saved_model.save(module, path, signatures={"int32": module.increment, "bool": module.negate})
    return path


def _config(models: dict) -> str:
    entries = []
    for name, (base_path, versions) in models.items():
        policy = ""
        if versions:
            policy = "model_version_policy { specific { %s } } " % " ".join(f"versions: {v}" for v in versions)
        entries.append(f'config {{ name: "{name}" base_path: "{base_path}" model_platform: "tensorflow" '
                       f'{policy}}}')
    return "model_config_list {\n  " + "\n  ".join(entries) + "\n}\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(gRPC target, REST base URL) of the server under test."""
    target = os.environ.get("KOA_SERVING_TARGET")
    if target:
        yield target, os.environ.get("KOA_SERVING_REST_URL")
        return
    tmp = tmp_path_factory.mktemp("upstream")
    typed = write_typed_model(str(tmp / "typed_inputs" / "1"))
    config = tmp / "models.config"
    config.write_text(_config({
        "default": (os.path.join(TESTDATA, "saved_model_half_plus_two_cpu"), None),
        "half_plus_three": (os.path.join(TESTDATA, "saved_model_half_plus_three"), None),
        "half_plus_two_tf2": (os.path.join(TESTDATA, "saved_model_half_plus_two_tf2_cpu"), None),
        TWO_VERSIONS: (os.path.join(TESTDATA, TWO_VERSIONS), [123]),
        "typed_inputs": (os.path.dirname(typed), None),
    }))
    # Five models load before the ports open; on a busy machine that is minutes.
    process, target, rest_url = start_server(tmp, [f"--model_config_file={config}"], timeout=900.0)
    yield target, rest_url
    assert process.stop() == 0, process.log()[-3000:]


@pytest.fixture(scope="module")
def apis():
    from tensorflow_serving.apis import (classification_pb2, get_model_status_pb2, inference_pb2,
                                         model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
                                         regression_pb2)

    return {"classification": classification_pb2, "status": get_model_status_pb2,
            "inference": inference_pb2, "model_service": model_service_pb2_grpc, "predict": predict_pb2,
            "prediction_service": prediction_service_pb2_grpc, "regression": regression_pb2}


@pytest.fixture(scope="module")
def stub(server, apis):
    with grpc.insecure_channel(server[0]) as channel:
        yield apis["prediction_service"].PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(server, apis):
    with grpc.insecure_channel(server[0]) as channel:
        yield apis["model_service"].ModelServiceStub(channel)


@pytest.fixture(scope="module")
def rest(server):
    """rest(path, body) -> (HTTP status, raw body text); body None is a GET, str is sent as is."""
    if not server[1]:
        pytest.skip("KOA_SERVING_REST_URL not set")

    def call(path, body=None):
        data = None if body is None else (body if isinstance(body, str) else json.dumps(body)).encode()
        request = urllib.request.Request(server[1] + path, data=data, method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    return call


def _rpc_error(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _predict_request(apis, model, value=2.0, dtype=1, output_filter=True):
    """Upstream's VerifyPredictRequest: x = [value] (float_val, shape [1])."""
    request = apis["predict"].PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].dtype = dtype
    if dtype == 1:
        request.inputs["x"].float_val.append(value)
    else:
        request.inputs["x"].int_val.append(int(value))
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if output_filter:
        request.output_filter.append("y")
    return request


def _examples_input(input_proto, **features):
    example = input_proto.example_list.examples.add()
    for name, value in features.items():
        example.features.feature[name].float_list.value.append(value)


# -- predict ----------------------------------------------------------------

# model server test, testPredictSavedModel / testGoodModelConfig (VerifyPredictRequest,
# with and without output_filter): half_plus_two -> 3.0, half_plus_three -> 4.0.
@pytest.mark.parametrize("model, expected", [("default", 3.0), ("half_plus_three", 4.0),
                                             ("half_plus_two_tf2", 3.0)])
@pytest.mark.parametrize("output_filter", [True, False])
def test_predict_grpc_verify_predict_request(stub, apis, model, expected, output_filter):
    result = stub.Predict(_predict_request(apis, model, output_filter=output_filter), timeout=30)

    assert "y" in result.outputs
    assert result.outputs["y"].dtype == 1  # DT_FLOAT
    assert list(result.outputs["y"].float_val) == [expected]
    assert result.model_spec.name == model
    assert result.model_spec.signature_name == "serving_default"
    assert result.model_spec.version.value == 123


@pytest.mark.parametrize("path, body, expected", [
    # model server test, testPredictREST and testPredictColumnarREST.
    ("/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]}, {"predictions": [3.0, 3.5, 4.0]}),
    ("/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]}, {"outputs": [3.0, 3.5, 4.0]}),
    # g3doc/api_rest.md, the half_plus_three predict example.
    ("/v1/models/half_plus_three:predict", {"instances": [1.0, 2.0, 5.0]}, {"predictions": [3.5, 4.0, 5.5]}),
    # testdata README / api_rest.md canonical request on half_plus_two.
    ("/v1/models/default:predict", {"instances": [1.0, 2.0, 5.0]}, {"predictions": [2.5, 3.0, 4.5]}),
    # REST handler test, Predict (latest; version 123; explicit signature; columnar).
    (f"/v1/models/{TWO_VERSIONS}:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]},
     {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
    (f"/v1/models/{TWO_VERSIONS}/versions/123:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
    (f"/v1/models/{TWO_VERSIONS}/versions/123:predict",
     {"signature_name": "serving_default", "instances": [3.0, 4.0]}, {"predictions": [3.5, 4.0]}),
    (f"/v1/models/{TWO_VERSIONS}/versions/123:predict",
     {"signature_name": "serving_default", "inputs": [3.0, 4.0]}, {"outputs": [3.5, 4.0]}),
    # json_tensor.cc accepts JSON integers for float inputs when exact.
    ("/v1/models/default:predict", {"instances": [1, 2]}, {"predictions": [2.5, 3.0]}),
    ("/v1/models/half_plus_two_tf2:predict", {"instances": [2.0]}, {"predictions": [3.0]}),
])
def test_predict_rest(rest, path, body, expected):
    code, text = rest(path, body)

    assert code == 200, text
    assert json.loads(text) == expected


# -- classify ---------------------------------------------------------------

def test_classify_grpc(stub, apis):
    # model server test, testClassify.
    request = apis["classification"].ClassificationRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "classify_x_to_y"
    _examples_input(request.input, x=2.0)

    result = stub.Classify(request, timeout=30)

    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    assert (result.model_spec.name, result.model_spec.signature_name, result.model_spec.version.value) == (
        "default", "classify_x_to_y", 123)


@pytest.mark.parametrize("path, x, expected", [
    ("/v1/models/default:classify", 2.0, [[["", 3.0]]]),  # model server test, testClassifyREST
    (f"/v1/models/{TWO_VERSIONS}:classify", 20.0, [[["", 12]]]),  # REST handler test, Classify
    (f"/v1/models/{TWO_VERSIONS}/versions/123:classify", 10.0, [[["", 7]]]),
])
def test_classify_rest(rest, path, x, expected):
    code, text = rest(path, {"signature_name": "classify_x_to_y", "examples": [{"x": x}]})

    assert code == 200, text
    assert json.loads(text) == {"results": expected}


# -- regress ----------------------------------------------------------------

def test_regress_grpc(stub, apis):
    # model server test, testRegress.
    request = apis["regression"].RegressionRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "regress_x_to_y"
    _examples_input(request.input, x=2.0)

    result = stub.Regress(request, timeout=30)

    assert [r.value for r in result.result.regressions] == [3.0]
    assert (result.model_spec.name, result.model_spec.signature_name, result.model_spec.version.value) == (
        "default", "regress_x_to_y", 123)


@pytest.mark.parametrize("path, x, expected", [
    ("/v1/models/default:regress", 2.0, [3.0]),  # model server test, testRegressREST
    (f"/v1/models/{TWO_VERSIONS}:regress", 80.0, [42]),  # REST handler test, Regress
    (f"/v1/models/{TWO_VERSIONS}/versions/123:regress", 80.0, [42]),
])
def test_regress_rest(rest, path, x, expected):
    code, text = rest(path, {"signature_name": "regress_x_to_y", "examples": [{"x": x}]})

    assert code == 200, text
    assert json.loads(text) == {"results": expected}


def test_regress_grpc_on_classify_signature_is_refused(stub, apis):
    # regressor.cc, GetRegressionSignatureDef.
    request = apis["regression"].RegressionRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "classify_x_to_y"
    _examples_input(request.input, x=2.0)

    code, details = _rpc_error(lambda: stub.Regress(request, timeout=30))

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == ("Expected regression signature method_name to be tensorflow/serving/regress. "
                       "Was: tensorflow/serving/classify")


# -- multi-inference --------------------------------------------------------

def _multi_request(apis, tasks, features=None):
    request = apis["inference"].MultiInferenceRequest()
    for model, signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = model
        task.model_spec.signature_name = signature
        task.method_name = method
    _examples_input(request.input, **(features or {"x": 2.0}))
    return request


def test_multi_inference_grpc(stub, apis):
    # model server test, testMultiInference.
    request = _multi_request(apis, [("default", "regress_x_to_y", REGRESS),
                                    ("default", "classify_x_to_y", CLASSIFY)])

    result = stub.MultiInference(request, timeout=30)

    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i, task in enumerate(request.tasks):
        spec = result.results[i].model_spec
        assert (spec.name, spec.signature_name, spec.version.value) == (
            task.model_spec.name, task.model_spec.signature_name, 123)


@pytest.mark.parametrize("tasks, features, code, message", [
    # multi_inference_test.cc, EvaluateDuplicateSignaturesTest.
    ([("default", "regress_x_to_y", REGRESS), ("default", "regress_x_to_y", REGRESS)], None,
     grpc.StatusCode.INVALID_ARGUMENT, "Duplicate evaluation of signature: regress_x_to_y"),
    # UsupportedSignatureTypeTest.
    ([("default", "serving_default", "tensorflow/serving/predict")], None,
     grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature"),
    # MissingModelNameTest-style: tasks must name one model.
    ([("default", "regress_x_to_y", REGRESS), ("half_plus_three", "regress_x_to_y", REGRESS)], None,
     grpc.StatusCode.INVALID_ARGUMENT, "must access the same model name"),
    # SignaturesWithDifferentInputsTest.
    ([("default", "regress_x_to_y", REGRESS), ("default", "regress_x2_to_y3", REGRESS)], {"x": 2.0, "x2": 2.0},
     grpc.StatusCode.INVALID_ARGUMENT, "Input tensor must be the same"),
])
def test_multi_inference_errors(stub, apis, tasks, features, code, message):
    actual_code, details = _rpc_error(lambda: stub.MultiInference(_multi_request(apis, tasks, features),
                                                                  timeout=30))

    assert actual_code == code
    assert message in details


# -- metadata and status ----------------------------------------------------

def test_status_grpc_get_model_status(model_stub, apis):
    # model server test, testGetModelStatus.
    request = apis["status"].GetModelStatusRequest()
    request.model_spec.name = "default"

    result = model_stub.GetModelStatus(request, timeout=30)

    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].status.error_code == 0


@pytest.mark.parametrize("path", ["/v1/models/default",  # model server test, testGetStatusREST
                                  f"/v1/models/{TWO_VERSIONS}",  # REST handler test, GetStatus
                                  f"/v1/models/{TWO_VERSIONS}/versions/123"])
def test_status_rest(rest, path):
    code, text = rest(path)

    assert code == 200, text
    assert json.loads(text) == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_status_rest_metadata(rest):
    # REST handler test, GetModelMetadata: model_spec and the signature map of the model.
    code, text = rest(f"/v1/models/{TWO_VERSIONS}/versions/123/metadata")

    assert code == 200, text
    body = json.loads(text)
    assert body["model_spec"] == {"name": TWO_VERSIONS, "signature_name": "", "version": "123"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "classify_x_to_y", "regress_x_to_y"} <= set(signatures)
    assert signatures["regress_x_to_y"]["method_name"] == REGRESS


# -- REST JSON formats ------------------------------------------------------

def test_json_float32_printed_shortest_round_trip(rest):
    # json_tensor.cc, WriteDecimal: 0.5 * 0.2 + 2 in float32 prints as 2.1.
    code, text = rest("/v1/models/default:predict", {"instances": [0.2]})

    assert code == 200, text
    assert "2.1" in text and "2.09" not in text


def test_json_whole_floats_keep_decimal_point(rest):
    # json_tensor.cc, WriteDecimal: whole numbers get a trailing ".0".
    code, text = rest("/v1/models/default:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})

    assert code == 200, text
    assert "".join(text.split()) == '{"results":[3.0]}'


def test_json_classify_result_is_label_score_pairs(rest):
    # api_rest.md, classify response: [[[label, score], ...], ...], label "" without classes.
    code, text = rest("/v1/models/default:classify", {"signature_name": "classify_x_to_y",
                                                      "examples": [{"x": 2.0}, {"x": 4.0}]})

    assert code == 200, text
    assert "".join(text.split()) == '{"results":[[["",3.0]],[["",4.0]]]}'


def test_json_context_features_join_each_example(rest):
    # api_rest.md, classify/regress "context": features common to all examples.
    code, text = rest("/v1/models/default:regress", {"signature_name": "regress_x_to_y", "context": {"x": 4.0},
                                                     "examples": [{}, {"x": 6.0}]})

    assert code == 200, text
    assert json.loads(text) == {"results": [4.0, 5.0]}


def test_json_typed_outputs(rest):
    # json_tensor.cc, AddSingleValueAndAdvance: int32 and bool outputs as JSON ints and booleans.
    code, text = rest("/v1/models/typed_inputs:predict", {"signature_name": "int32", "instances": [1, -5]})
    assert code == 200, text
    assert json.loads(text) == {"predictions": [2, -4]}

    code, text = rest("/v1/models/typed_inputs:predict", {"signature_name": "bool", "inputs": [True, False]})
    assert code == 200, text
    assert json.loads(text) == {"outputs": [False, True]}


# -- errors -----------------------------------------------------------------

@pytest.mark.parametrize("method, path, message", [
    # REST handler test, UnsupportedApiCalls.
    ("GET", "/v1/foo", "Malformed request"),
    ("POST", "/v1/foo", "Malformed request"),
    ("GET", "/v1/models", "Missing model name"),
    ("POST", "/v1/models", "Malformed request"),
    ("GET", "/v1/models/foo:predict", "Malformed request"),
    ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
    ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/18446744073709551615:regress", "Failed to convert version"),
])
def test_errors_rest_unsupported_api_calls(rest, method, path, message):
    code, text = rest(path, "" if method == "POST" else None)

    assert code == 400, text
    assert message in json.loads(text)["error"]


@pytest.mark.parametrize("path", ["/v1/models/foo:predict", "/v1/models/foo/versions/50:predict",
                                  f"/v1/models/{TWO_VERSIONS}/versions/99:predict"])
def test_errors_rest_model_name_version_not_found(rest, path):
    # REST handler test, PredictModelNameVersionErrors.
    code, text = rest(path, {"instances": [1]})

    assert code == 404, text


@pytest.mark.parametrize("path, body, message", [
    # REST handler test, PredictRequestErrors.
    ("/v1/models/default:predict", "", "JSON Parse error: The document is empty"),
    ("/v1/models/default:predict", "instances = [1, 2]", "JSON Parse error: Invalid value"),
    ("/v1/models/default:predict", {"instances": ["a", "b"]}, "not of expected type: float"),
    # json_tensor.cc, TypeError: values that do not fit the input's dtype.
    ("/v1/models/typed_inputs:predict", {"signature_name": "int32", "instances": [2147483648]},
     "JSON Value: 2147483648 Type: Number is not of expected type: int32"),
    ("/v1/models/typed_inputs:predict", {"signature_name": "int32", "instances": [1.5]},
     "JSON Value: 1.5 Type: Number is not of expected type: int32"),
    ("/v1/models/typed_inputs:predict", {"signature_name": "int32", "inputs": [2.0]},
     "JSON Value: 2.0 Type: Number is not of expected type: int32"),
    ("/v1/models/typed_inputs:predict", {"signature_name": "bool", "instances": [1]},
     "JSON Value: 1 Type: Number is not of expected type: bool"),
    ("/v1/models/typed_inputs:predict", {"signature_name": "int32", "instances": [True]},
     "JSON Value: true Type: True is not of expected type: int32"),
    # json_tensor.cc, LossyDecimalError.
    ("/v1/models/default:predict", {"instances": [16777217]},
     "Cannot convert JSON value: 16777217 to float without loss of precision."),
    # json_tensor.cc, FillPredictRequestFromJson.
    ("/v1/models/default:predict", {}, "Missing 'inputs' or 'instances' key"),
    ("/v1/models/default:predict", {"instances": []}, "No values in 'instances' array"),
    ("/v1/models/default:predict", {"instances": [1.0], "inputs": [1.0]},
     "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"),
    ("/v1/models/default:predict", {"signature_name": 5, "instances": [1.0]},
     "'signature_name' key must be a string value."),
    ("/v1/models/default:predict", {"instances": [[1.0], [1.0, 2.0]]},
     "Expecting tensor size: 1 but got: 2"),
    # json_tensor.cc, FillClassifyRegressRequestFromJson and MakeExampleFromJsonObject.
    ("/v1/models/default:regress", {"signature_name": "regress_x_to_y"}, "key 'examples' is expected"),
    ("/v1/models/default:regress", {"signature_name": "regress_x_to_y", "examples": []},
     "'examples' value is an empty array"),
    ("/v1/models/default:regress", {"signature_name": "regress_x_to_y", "examples": [[1.0]]},
     "Example must be JSON object but got JSON Array"),
    ("/v1/models/default:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": [1.0, "a"]}]},
     "Unexpected element type in feature: x expecting type: float"),
    ("/v1/models/default:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": None}]},
     "Feature: x has element with unexpected JSON type: Null"),
    # http_rest_api_handler.cc: unknown signature on REST predict.
    ("/v1/models/default:predict", {"signature_name": "nope", "instances": [1.0]},
     'Serving signature name: "nope" not found in signature def'),
    # classifier.cc, GetClassificationSignatureDef.
    ("/v1/models/default:classify", {"signature_name": "nope", "examples": [{"x": 1.0}]},
     "No signature was found with the name: nope"),
    ("/v1/models/default:classify", {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]},
     "Expected classification signature method_name to be tensorflow/serving/classify. "
     "Was: tensorflow/serving/regress"),
])
def test_errors_rest_bad_requests(rest, path, body, message):
    code, text = rest(path, body)

    assert code == 400, text
    assert message in json.loads(text)["error"]


def test_errors_rest_tensorflow_error_reveals_no_server_internals(rest):
    # An int64 feature where the TF1 graph parses a float: TensorFlow's own error, as upstream
    # returns it, and nothing of the server's stack or files.
    code, text = rest("/v1/models/default:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2}]})

    assert code == 400, text
    error = json.loads(text)["error"]
    assert "Data types don't match" in error
    assert "Traceback" not in error and ".py" not in error and 'File "' not in error


def test_errors_grpc_dtype_mismatch_is_tensorflows_text(stub, apis):
    # TensorFlow's DirectSession text, as TF Serving returns it for x sent as int32.
    code, details = _rpc_error(lambda: stub.Predict(_predict_request(apis, "default", dtype=3), timeout=30))

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "Expects arg[0] to be float but int32 is provided"


def test_errors_grpc_missing_model_mentions_servable(stub, apis):
    # model server test, WaitForServerReady: a missing model's error details contain 'Servable'.
    request = apis["predict"].PredictRequest()
    request.model_spec.name = "intentionally_missing_model"

    code, details = _rpc_error(lambda: stub.Predict(request, timeout=30))

    assert code == grpc.StatusCode.NOT_FOUND
    assert "Servable" in details


def test_errors_grpc_unknown_predict_signature(stub, apis):
    # predict_util.cc: an unknown signature key is FAILED_PRECONDITION.
    request = _predict_request(apis, "default")
    request.model_spec.signature_name = "nope"

    code, details = _rpc_error(lambda: stub.Predict(request, timeout=30))

    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details == 'Serving signature key "nope" not found.'


def test_errors_grpc_shape_is_left_to_tensorflow(stub, apis):
    # No static-shape pre-check: x of shape [2, 1] and [3] both run, as in TF Serving.
    request = _predict_request(apis, "default")
    request.inputs["x"].tensor_shape.dim[0].size = 3
    request.inputs["x"].float_val[:] = [1.0, 2.0, 5.0]

    result = stub.Predict(request, timeout=30)

    assert np.allclose(list(result.outputs["y"].float_val), [2.5, 3.0, 4.5])
    assert [d.size for d in result.outputs["y"].tensor_shape.dim] == [3]
