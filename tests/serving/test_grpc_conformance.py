"""Conformance of the gRPC API, through the tensorflow_serving.apis stubs only."""

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2  # noqa: F401 (the official stubs are what is tested)

from components import features
import example_model
from serving import tensors
from serving_fixtures import OVERSIZE_LIMIT_BYTES, jpeg_bytes, png_bytes

IMAGES = [png_bytes(1), png_bytes(2, size=64, bits=16), jpeg_bytes(3)]


def _predict_request(stubs, images, name="koa", signature="", version=None, label=None):
    request = stubs.predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs[features.SERVING_INPUT].CopyFrom(
        tensors.to_tensor_proto(np.array(images, dtype=object), stubs.tensor_pb2.TensorProto))
    return request


def _predict(channel, stubs, request):
    return stubs.prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


def _error(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_predict_latest_returns_outputs_of_highest_version(channel, stubs, reference):
    response = _predict(channel, stubs, _predict_request(stubs, IMAGES))

    assert response.model_spec.name == "koa"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    assert set(response.outputs) == {features.PROBABILITIES_OUTPUT, features.GRADE_OUTPUT,
                                     features.EXPECTED_GRADE_OUTPUT}
    expected = reference(2, IMAGES)
    for key, value in expected.items():
        np.testing.assert_allclose(tensors.to_ndarray(response.outputs[key]), value, rtol=1e-5, atol=1e-6)
    assert response.outputs[features.GRADE_OUTPUT].dtype == tensors.DT_INT64


@pytest.mark.parametrize("spec", [{"version": 1}, {"label": "stable"}, {"version": 2}, {"label": "canary"}])
def test_predict_specific_version_and_label(channel, stubs, reference, spec):
    response = _predict(channel, stubs, _predict_request(stubs, IMAGES[:1], **spec))

    version = spec.get("version") or {"stable": 1, "canary": 2}[spec["label"]]
    assert response.model_spec.version.value == version
    np.testing.assert_allclose(tensors.to_ndarray(response.outputs[features.PROBABILITIES_OUTPUT]),
                               reference(version, IMAGES[:1])[features.PROBABILITIES_OUTPUT], rtol=1e-5)


def test_versions_give_different_predictions(reference):
    assert not np.allclose(reference(1, IMAGES)[features.PROBABILITIES_OUTPUT],
                           reference(2, IMAGES)[features.PROBABILITIES_OUTPUT])


def test_gradcam_signature_returns_heatmap_in_unit_range(channel, stubs):
    response = _predict(channel, stubs, _predict_request(stubs, IMAGES, signature=features.GRADCAM_SIGNATURE))

    heatmap = tensors.to_ndarray(response.outputs[features.HEATMAP_OUTPUT])
    assert heatmap.shape == (3, 32, 32)
    assert heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0)


def test_from_examples_signature_matches_image_signature(channel, stubs, reference):
    example = stubs.example_pb2.Example()
    example.features.feature[features.IMAGE_KEY].bytes_list.value.append(IMAGES[0])
    request = stubs.predict_pb2.PredictRequest()
    request.model_spec.name = "koa"
    request.model_spec.signature_name = features.EXAMPLES_SIGNATURE
    request.inputs[features.EXAMPLES_INPUT].CopyFrom(tensors.to_tensor_proto(
        np.array([example.SerializeToString()], dtype=object), stubs.tensor_pb2.TensorProto))

    response = _predict(channel, stubs, request)

    np.testing.assert_allclose(tensors.to_ndarray(response.outputs[features.PROBABILITIES_OUTPUT]),
                               reference(2, IMAGES[:1])[features.PROBABILITIES_OUTPUT], rtol=1e-5)


def test_output_filter(channel, stubs):
    request = _predict_request(stubs, IMAGES[:1])
    request.output_filter.append(features.GRADE_OUTPUT)
    assert set(_predict(channel, stubs, request).outputs) == {features.GRADE_OUTPUT}

    request.output_filter.append("nope")
    code, details = _error(lambda: _predict(channel, stubs, request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: nope" in details


@pytest.mark.parametrize("spec, message", [
    ({"name": "nope"}, "Servable not found for request: Latest(nope)"),
    ({"version": 7}, "Servable not found for request: Specific(koa, 7)"),
])
def test_unknown_model_or_version_is_not_found(channel, stubs, spec, message):
    code, details = _error(lambda: _predict(channel, stubs, _predict_request(stubs, IMAGES[:1], **spec)))
    assert code == grpc.StatusCode.NOT_FOUND
    assert message in details


def test_unknown_label_is_invalid_argument(channel, stubs):
    code, details = _error(lambda: _predict(channel, stubs, _predict_request(stubs, IMAGES[:1], label="nope")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Unrecognized servable version label: nope" in details


def test_unknown_signature_is_failed_precondition_as_in_tf_serving(channel, stubs):
    code, details = _error(lambda: _predict(channel, stubs, _predict_request(stubs, IMAGES[:1], signature="nope")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert 'Serving signature key "nope" not found.' in details


def test_missing_input(channel, stubs):
    request = _predict_request(stubs, IMAGES[:1])
    del request.inputs[features.SERVING_INPUT]
    code, details = _error(lambda: _predict(channel, stubs, request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Missing but required: {image_bytes}" in details


def test_wrong_input_name(channel, stubs):
    request = _predict_request(stubs, IMAGES[:1])
    request.inputs["images"].CopyFrom(request.inputs.pop(features.SERVING_INPUT))
    code, details = _error(lambda: _predict(channel, stubs, request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "input tensor alias not found in signature: images" in details or "Sent extra: {images}" in details


def test_wrong_dtype(channel, stubs):
    request = _predict_request(stubs, IMAGES[:1])
    request.inputs[features.SERVING_INPUT].CopyFrom(
        tensors.to_tensor_proto(np.zeros([1], np.float32), stubs.tensor_pb2.TensorProto))
    code, details = _error(lambda: _predict(channel, stubs, request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "to be string but float is provided" in details


def test_malformed_tensor(channel, stubs):
    request = _predict_request(stubs, IMAGES[:1])
    tensor = request.inputs[features.SERVING_INPUT]
    tensor.string_val.extend([IMAGES[1], IMAGES[2]])  # 3 values for a shape of [1]
    code, details = _error(lambda: _predict(channel, stubs, request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensor parsing error: image_bytes" in details


def test_bytes_that_are_not_an_image(channel, stubs):
    code, details = _error(lambda: _predict(channel, stubs, _predict_request(stubs, [b"not an image"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "image" in details.lower()


def test_oversized_message_is_resource_exhausted(channel, stubs):
    big = np.random.default_rng(0).bytes(OVERSIZE_LIMIT_BYTES + 1024)
    code, _ = _error(lambda: _predict(channel, stubs, _predict_request(stubs, [big])))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_get_model_metadata(channel, stubs):
    request = stubs.get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "koa"
    request.metadata_field.append("signature_def")

    response = stubs.prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request)

    assert response.model_spec.version.value == 2
    signature_map = stubs.get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    signatures = signature_map.signature_def
    for name in (features.SERVING_SIGNATURE, features.GRADCAM_SIGNATURE):
        assert signatures[name].inputs[features.SERVING_INPUT].dtype == tensors.DT_STRING
        assert signatures[name].method_name == "tensorflow/serving/predict"
    assert features.HEATMAP_OUTPUT in signatures[features.GRADCAM_SIGNATURE].outputs
    assert signatures[features.EXAMPLES_SIGNATURE].inputs[features.EXAMPLES_INPUT].dtype == tensors.DT_STRING


def test_get_model_status(channel, stubs):
    service = stubs.model_service_pb2_grpc.ModelServiceStub(channel)
    request = stubs.get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "koa"

    response = service.GetModelStatus(request)

    states = {s.version: (s.state, s.status.error_code) for s in response.model_version_status}
    assert states == {1: (30, 0), 2: (30, 0)}  # AVAILABLE, OK

    request.model_spec.version.value = 7
    code, details = _error(lambda: service.GetModelStatus(request))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "Could not find version 7 of model koa")

    request = stubs.get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    code, details = _error(lambda: service.GetModelStatus(request))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nope")


def _classify_request(stubs, name, rows):
    request = stubs.classification_pb2.ClassificationRequest()
    request.model_spec.name = name
    for row in rows:
        example = request.input.example_list.examples.add()
        example.features.feature[example_model.CLASSIFIER_FEATURE].float_list.value.extend(row)
    return request


def test_classify(channel, stubs):
    rows = [[1.0, 0.0], [0.5, -2.0]]
    response = stubs.prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(
        _classify_request(stubs, "classifier", rows))

    logits = np.array(rows, np.float32) @ example_model.classifier_weights()
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert response.model_spec.version.value == 1
    for classification, scores in zip(response.result.classifications, expected):
        assert [c.label.encode() for c in classification.classes] == list(example_model.CLASSIFIER_LABELS)
        np.testing.assert_allclose([c.score for c in classification.classes], scores, rtol=1e-5)


def test_classify_without_classification_signature_is_invalid_argument(channel, stubs):
    code, details = _error(lambda: stubs.prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(
        _classify_request(stubs, "koa", [[1.0, 2.0]])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected classification signature method_name to be tensorflow/serving/classify" in details
