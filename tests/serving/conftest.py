"""Fixtures for the model server tests: real small SavedModels and real servers.

The conformance tests talk to a server through the TensorFlow Serving API
only. By default a fixture starts the project's server (``python -m serving``)
in a subprocess on free ports. To run the same tests against another server,
e.g. a real ``tensorflow/serving`` container, write its models with
``python tests/models/example_model.py DIR --config-base-path=/models``, start it on
``DIR/models.config`` with ``--grpc_channel_arguments=grpc.max_receive_message_length=1048576``,
then set ``KOA_SERVING_TARGET=host:grpc_port``, ``KOA_SERVING_REST_URL=http://host:rest_port``
and ``KOA_SERVING_MODELS_DIR=DIR`` (expected outputs are computed from DIR).
"""

import os
from dataclasses import dataclass
from typing import Optional

import grpc
import pytest

from serving_fixtures import (LINEAR_VERSIONS, OVERSIZE_LIMIT_BYTES, ServerProcess, start_server,
                              write_linear_model)


@dataclass
class Endpoint:
    """Where a server under test listens."""

    grpc_target: str
    rest_url: Optional[str]
    models_dir: str
    project_server: bool
    process: Optional[ServerProcess] = None


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """The conformance models (koa versions 1 and 2, classifier version 1)."""
    import example_model

    external = os.environ.get("KOA_SERVING_MODELS_DIR")
    if external:
        return external
    root = str(tmp_path_factory.mktemp("models"))
    example_model.write_conformance_models(root)
    return root


@pytest.fixture(scope="session")
def linear_models(tmp_path_factory):
    """{version: SavedModel directory} of the linear test model's versions (LINEAR_VERSIONS)."""
    root = tmp_path_factory.mktemp("linear")
    paths = {}
    for version, (slope, intercept) in LINEAR_VERSIONS.items():
        paths[version] = str(root / str(version))
        write_linear_model(paths[version], slope, intercept)
    return paths


@pytest.fixture(scope="session")
def reference(models_dir):
    """Runs the koa models in-process: reference(version, signature, images) -> outputs."""
    import tensorflow as tf

    loaded = {}

    def run(version: int, images: list, signature: str = "serving_default") -> dict:
        if version not in loaded:
            loaded[version] = tf.saved_model.load(os.path.join(models_dir, "koa", str(version)))
        outputs = loaded[version].signatures[signature](image_bytes=tf.constant(images, dtype=tf.string))
        return {key: value.numpy() for key, value in outputs.items()}

    return run


@pytest.fixture(scope="session")
def conformance(tmp_path_factory, models_dir):
    """The server the conformance tests talk to (see module docstring)."""
    import example_model

    target = os.environ.get("KOA_SERVING_TARGET")
    if target:
        yield Endpoint(target, os.environ.get("KOA_SERVING_REST_URL"), models_dir, project_server=False)
        return
    tmp = tmp_path_factory.mktemp("conformance")
    config = tmp / "models.config"
    config.write_text(example_model.model_config_text(
        {"koa": os.path.join(models_dir, "koa"), "classifier": os.path.join(models_dir, "classifier")}))
    monitoring = tmp / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    process, target, rest_url = start_server(tmp, [
        f"--model_config_file={config}", f"--monitoring_config_file={monitoring}",
        f"--grpc_channel_arguments=grpc.max_receive_message_length={OVERSIZE_LIMIT_BYTES}"])
    yield Endpoint(target, rest_url, models_dir, project_server=True, process=process)
    assert process.stop() == 0, process.log()[-3000:]


@pytest.fixture(scope="session")
def stubs():
    """The TensorFlow Serving API modules."""
    from serving import protos

    return protos.load()


@pytest.fixture()
def channel(conformance):
    """A gRPC channel to the conformance server."""
    with grpc.insecure_channel(conformance.grpc_target) as ch:
        yield ch


@pytest.fixture()
def base(tmp_path):
    """An empty base path for the linear model's versions."""
    path = tmp_path / "linear"
    path.mkdir()
    return path
