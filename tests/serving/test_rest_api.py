"""Conformance of the REST API (JSON shapes, b64, errors) against the same server."""

import base64
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

import example_model
from serving_fixtures import png_bytes

IMAGES = [png_bytes(11), png_bytes(12)]


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


@pytest.fixture()
def rest(conformance):
    if not conformance.rest_url:
        pytest.skip("KOA_SERVING_REST_URL not set")

    def call(path, body=None):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(conformance.rest_url + path, data=data,
                                         method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.headers.get("Content-Type"), response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type"), e.read()

    def call_json(path, body=None):
        code, _, raw = call(path, body)
        return code, json.loads(raw)

    call.json = call_json
    return call


def test_model_status(rest):
    code, body = rest.json("/v1/models/koa")
    assert code == 200
    assert sorted(body["model_version_status"], key=lambda s: s["version"]) == [
        {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for v in ("1", "2")]

    code, body = rest.json("/v1/models/koa/versions/1")
    assert code == 200 and [s["version"] for s in body["model_version_status"]] == ["1"]
    code, body = rest.json("/v1/models/koa/labels/canary")
    assert code == 200 and [s["version"] for s in body["model_version_status"]] == ["2"]


def test_metadata(rest):
    code, body = rest.json("/v1/models/koa/versions/1/metadata")
    assert code == 200
    assert body["model_spec"]["name"] == "koa" and body["model_spec"]["version"] == "1"
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert signatures["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert "heatmap" in signatures["gradcam"]["outputs"]


def test_predict_row_format_with_b64(rest, reference):
    code, body = rest.json("/v1/models/koa:predict", {"instances": [_b64(i) for i in IMAGES]})

    assert code == 200
    expected = reference(2, IMAGES)
    assert len(body["predictions"]) == 2
    for row, prediction in enumerate(body["predictions"]):
        assert set(prediction) == {"probabilities", "grade", "expected_grade"}
        np.testing.assert_allclose(prediction["probabilities"], expected["probabilities"][row], rtol=1e-5)
        assert prediction["grade"] == expected["grade"][row]


def test_predict_row_format_with_named_inputs_and_label(rest, reference):
    code, body = rest.json("/v1/models/koa/labels/stable:predict",
                           {"instances": [{"image_bytes": _b64(IMAGES[0])}]})
    assert code == 200
    np.testing.assert_allclose(body["predictions"][0]["probabilities"],
                               reference(1, IMAGES[:1])["probabilities"][0], rtol=1e-5)


def test_predict_columnar_format(rest, reference):
    code, body = rest.json("/v1/models/koa/versions/1:predict",
                           {"signature_name": "gradcam", "inputs": {"image_bytes": [_b64(IMAGES[0])]}})
    assert code == 200
    outputs = body["outputs"]
    np.testing.assert_allclose(outputs["probabilities"], reference(1, IMAGES[:1])["probabilities"], rtol=1e-5)
    assert np.array(outputs["heatmap"]).shape == (1, 32, 32)


def test_classify(rest):
    code, body = rest.json("/v1/models/classifier:classify",
                           {"examples": [{example_model.CLASSIFIER_FEATURE: [1.0, 0.0]}]})
    assert code == 200
    labels = [label for label, _ in body["results"][0]]
    assert labels == [label.decode() for label in example_model.CLASSIFIER_LABELS]
    assert sum(score for _, score in body["results"][0]) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    ("/v1/models/koa/versions/7:predict", {"instances": ["x"]}, 404,
     "Servable not found for request: Specific(koa, 7)"),
    ("/v1/models/koa/labels/nope:predict", {"instances": ["x"]}, 400,
     "Unrecognized servable version label: nope"),
    ("/v1/models/koa:predict", {"signature_name": "nope", "instances": ["x"]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("/v1/models/koa:predict", b"{not json", 400, "JSON Parse error"),
    ("/v1/models/koa:predict", {"signature_name": 3, "instances": ["x"]}, 400,
     "'signature_name' key must be a string value."),
    ("/v1/models/koa:predict", {}, 400, "Missing 'inputs' or 'instances' key"),
    ("/v1/models/koa:predict", {"instances": [1.5]}, 400,
     "JSON Value: 1.5 Type: Number is not of expected type: string"),
    ("/v1/models/koa:predict", {"instances": [{"images": "x"}]}, 400, "images"),
    ("/v1/models/koa:predict", {"instances": [_b64(b"not an image")]}, 400, "image"),
    ("/v1/models/koa:classify", {"examples": [{"x": [1.0, 2.0]}]}, 400,
     "Expected classification signature method_name to be tensorflow/serving/classify"),
])
def test_errors_have_tf_serving_json_shape(rest, path, body, status, message):
    code, content_type, raw = rest(path, body)

    assert code == status
    assert content_type.startswith("application/json")
    parsed = json.loads(raw)
    assert list(parsed) == ["error"]
    assert message in parsed["error"]


def test_prometheus_metrics(rest, conformance):
    if not conformance.project_server:
        pytest.skip("metric names are the project server's own")
    rest.json("/v1/models/koa:predict", {"instances": [_b64(IMAGES[0])]})

    code, content_type, raw = rest("/monitoring/prometheus/metrics")

    text = raw.decode()
    assert code == 200 and content_type.startswith("text/plain")
    assert 'koa_serving_requests_total{api="rest",method="predict",model="koa",signature="serving_default",' \
           'status="OK",version="2"}' in text
    assert 'koa_serving_request_latency_seconds_count{' in text
    assert 'koa_serving_loaded_versions{model="koa"} 2.0' in text
    assert 'koa_serving_version_available{model="koa",version="1"} 1.0' in text
