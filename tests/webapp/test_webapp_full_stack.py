"""One upload through the whole product: web upload -> model server -> the model the
end-to-end pipeline test trained and pushed -> grade and heatmap on the result page,
checked against calling that SavedModel directly (in a subprocess: the web tests' process
never imports TensorFlow)."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from components import features
from koa.processes import ChildProcess, free_port
from webapp import db
from webapp.models import Prediction
from webapp_testlib import REPO, AuthActions, upload

_DIRECT_CALL = """
import json, sys
from components import features
features.select_keras_2()
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
image = open(sys.argv[2], "rb").read()
out = model.signatures[features.GRADCAM_SIGNATURE](image_bytes=tf.constant([image]))
print(json.dumps({k: v.numpy()[0].decode() if v.dtype == tf.string else v.numpy()[0].tolist()
                  for k, v in out.items()}))
"""


@pytest.fixture(scope="module")
def pushed_model_server(pipeline_run, tmp_path_factory):
    """The project's model server on the pipeline test's pushed models; yields
    (gRPC target, model base path, pushed version)."""
    from serving.client import ServingClient

    base_path = str(pipeline_run.project_dir / "serving_model" / "koa")
    port, rest_port = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("full_stack") / "server.log"
    env = dict(os.environ, **features.KERAS_ENV, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = ChildProcess("model server", [
        sys.executable, "-m", "serving", f"--port={port}", f"--rest_api_port={rest_port}",
        "--model_name=koa", f"--model_base_path={base_path}"], env=env,
        log_path=str(log_path), cwd=REPO)
    target = f"127.0.0.1:{port}"
    try:
        with ServingClient(target, "koa", timeout=2.0, retries=0) as client:
            process.wait_until(
                lambda: any(s.state == "AVAILABLE" for s in client.model_status()), 180)
        yield target, base_path, int(pipeline_run.record.pushed_version)
    finally:
        process.stop(timeout=20)


def _direct(version_dir: str, png: bytes, tmp_path) -> dict:
    image_path = tmp_path / "sent.png"
    image_path.write_bytes(png)
    env = dict(os.environ, **features.KERAS_ENV, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", _DIRECT_CALL, version_dir, str(image_path)],
                            env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_an_upload_is_graded_by_the_pushed_pipeline_model(
        make_app, pushed_model_server, pipeline_run, tmp_path):
    target, base_path, version = pushed_model_server
    app = make_app(KOA_SERVING_TARGET=target, KOA_MODEL_BASE_PATH=base_path,
                   KOA_SERVING_TIMEOUT=60.0)
    client = app.test_client()
    AuthActions(client).login()
    film = sorted((pipeline_run.data_dir / "3").glob("*.png"))[0].read_bytes()

    response = upload(client, [("knee.png", film)], json_response=True)
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["model"]["version"] == version
    sent = client.get(f"/predictions/{body['id']}/image.png").data
    expected = _direct(os.path.join(base_path, str(version)), sent, tmp_path)

    # The tiny synthetic model may flag the film: its threshold is the 99th percentile of
    # 32 validation films' distances. The web app keeps the model's answer either way.
    assert body["out_of_distribution"] is expected[features.OOD_FLAG_OUTPUT]
    assert body["ood_score"] == pytest.approx(expected[features.OOD_SCORE_OUTPUT], rel=1e-5)
    with app.app_context():
        stored = db.get_session().get(Prediction, body["id"])
        assert stored.grade == expected[features.GRADE_OUTPUT]
        assert stored.probabilities == pytest.approx(
            expected[features.PROBABILITIES_OUTPUT], abs=1e-5)
    page = client.get(body["result_url"]).get_data(as_text=True)
    if expected[features.OOD_FLAG_OUTPUT]:
        assert "grade" not in body and "Not graded" in page
    else:
        assert body["grade"] == expected[features.GRADE_OUTPUT]
        assert body["probabilities"] == pytest.approx(
            expected[features.PROBABILITIES_OUTPUT], abs=1e-5)
        assert features.GRADE_NAMES[expected[features.GRADE_OUTPUT]] in page
    # The pipeline recorded that it trained on the synthetic phantoms; the page says so.
    assert 'data-testid="synthetic-warning"' in page
    heat = client.get(f"/predictions/{body['id']}/heatmap.png")
    assert heat.status_code == 200
    overlay = np.asarray(Image.open(io.BytesIO(heat.data)))
    assert overlay.shape[:2] == np.asarray(expected[features.HEATMAP_OUTPUT]).shape
