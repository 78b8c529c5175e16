"""serving.client against the conformance server, and its failure behaviour."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from components import features
from serving.client import (InvalidInputError, ModelNotFoundError, ModelUnavailableError,
                            ModelVersionStatus, ServedPrediction, ServingClient, ServingError)
from serving_fixtures import REPO_ROOT, free_port, jpeg_bytes, png_bytes, start_server

IMAGES = [png_bytes(21), jpeg_bytes(22), png_bytes(23, bits=16)]


@pytest.fixture()
def client(conformance):
    with ServingClient(conformance.grpc_target, "koa", timeout=30) as c:
        yield c


def test_predict_returns_typed_prediction(client, reference):
    prediction = client.predict(IMAGES[0])

    expected = reference(2, IMAGES[:1])
    assert isinstance(prediction, ServedPrediction)
    assert prediction.model_name == "koa" and prediction.model_version == 2
    assert prediction.grade == int(expected["grade"][0])
    assert prediction.grade_name == features.GRADE_NAMES[prediction.grade]
    np.testing.assert_allclose(prediction.probabilities, expected["probabilities"][0], rtol=1e-5)
    assert prediction.confidence == prediction.probabilities[prediction.grade]
    assert prediction.expected_grade == pytest.approx(float(expected["expected_grade"][0]), rel=1e-5)
    assert prediction.heatmap is None
    # The conformance models predate the out-of-distribution check: "not checked".
    assert prediction.out_of_distribution is False and prediction.ood_score is None


def test_predict_with_explanation_and_version(client, reference):
    prediction = client.predict(IMAGES[1], explain=True, version=1)

    assert prediction.model_version == 1
    np.testing.assert_allclose(prediction.probabilities, reference(1, IMAGES[1:2])["probabilities"][0],
                               rtol=1e-5)
    assert prediction.heatmap.dtype == np.float32 and prediction.heatmap.shape == (32, 32)
    assert 0.0 <= prediction.heatmap.min() and prediction.heatmap.max() <= 1.0


def test_predict_many_is_one_batch_in_order(client, reference):
    predictions = client.predict_many(IMAGES)

    expected = reference(2, IMAGES)["probabilities"]
    assert [p.model_version for p in predictions] == [2, 2, 2]
    for prediction, row in zip(predictions, expected):
        np.testing.assert_allclose(prediction.probabilities, row, rtol=1e-5)
    assert client.predict_many([]) == []


def _colour_png(rgb) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def ood_client(tmp_path_factory):
    """A client of a server whose model also returns the out-of-distribution outputs."""
    import example_model

    root = tmp_path_factory.mktemp("ood")
    example_model.write_example_model(str(root / "koa" / "1"), seed=3, ood=True)
    process, target, _ = start_server(root, ["--model_name=koa", f"--model_base_path={root / 'koa'}"])
    try:
        with ServingClient(target, "koa", timeout=30) as c:
            yield c
    finally:
        # Graceful shutdown is asserted by test_server_lifecycle; here it only cleans up.
        process.stop()


def test_out_of_distribution_outputs_are_read(ood_client):
    gray, red = png_bytes(31), _colour_png((255, 0, 0))

    plain, flagged = ood_client.predict_many([gray, red])
    explained = ood_client.predict(red, explain=True)

    assert plain.out_of_distribution is False and plain.ood_score == pytest.approx(0.0, abs=1e-6)
    assert flagged.out_of_distribution is True and flagged.ood_score == pytest.approx(4.0, rel=1e-5)
    assert explained.out_of_distribution is True and explained.heatmap is not None
    # The model's reason output rides along: nothing for the gray film, colour for the red.
    assert plain.ood_reason == ""
    assert features.REASON_COLOUR in flagged.ood_reason.split(",")
    assert explained.ood_reason == flagged.ood_reason
    # The grade is still reported; refusing to show it is the caller's decision.
    assert 0 <= flagged.grade < features.NUM_GRADES


def test_model_status(client):
    assert sorted(client.model_status(), key=lambda s: s.version) == [
        ModelVersionStatus(1, "AVAILABLE", ""), ModelVersionStatus(2, "AVAILABLE", "")]


def test_errors_are_typed_and_say_what_failed(client, conformance):
    with pytest.raises(InvalidInputError, match="Predict .* model 'koa' at " + conformance.grpc_target):
        client.predict(b"definitely not an image")
    with pytest.raises(ModelNotFoundError, match="Specific\\(koa, 9\\)"):
        client.predict(IMAGES[0], version=9)
    with ServingClient(conformance.grpc_target, "nope") as other, pytest.raises(ModelNotFoundError):
        other.model_status()
    with ServingClient(conformance.grpc_target, "classifier") as other, pytest.raises(ServingError) as info:
        other.predict(IMAGES[0])  # the classifier model has no image signature
    assert not isinstance(info.value, (ModelUnavailableError, ModelNotFoundError))
    with pytest.raises(TypeError):
        client.predict("a path, not bytes")


def test_unreachable_server_is_unavailable_after_retries():
    port = free_port()
    with ServingClient(f"localhost:{port}", retries=2, timeout=2) as client:
        with pytest.raises(ModelUnavailableError, match=f"localhost:{port}.*after 3 attempts"):
            client.predict(IMAGES[0])


def test_client_import_does_not_import_tensorflow():
    code = ("import sys, serving.client, serving.protos; serving.protos.load(); "
            "c = serving.client.ServingClient('localhost:1'); c.close(); "
            "assert 'tensorflow.python' not in sys.modules, 'TensorFlow was imported'; "
            "assert 'tensorflow' not in sys.modules; "
            "import tensorflow as tf; tf.constant(1); print('ok')")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
