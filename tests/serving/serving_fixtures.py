"""Helpers for the model server tests: test images and server subprocesses."""

import io
import os
import shutil
import sys

import grpc
import numpy as np
from PIL import Image

from components import features
from koa.processes import ChildProcess, StartError, free_port  # noqa: F401 (free_port re-exported)


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Small enough for 2 cores, large enough to exercise the 1 MB message limit.
OVERSIZE_LIMIT_BYTES = 1024 * 1024
# Versions of the linear test model -> (slope, intercept): each answers differently.
LINEAR_VERSIONS = {1: (0.5, 2.0), 2: (0.5, 3.0), 3: (2.0, 1.0)}


def png_bytes(seed: int, size: int = 48, bits: int = 8) -> bytes:
    """Returns a random grayscale PNG (8- or 16-bit)."""
    rng = np.random.default_rng(seed)
    if bits == 16:
        image = Image.fromarray(rng.integers(0, 65535, size=(size, size)).astype(np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, size=(size, size)).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(seed: int, size: int = 40) -> bytes:
    """Returns a random RGB JPEG."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size=(size, size, 3)).astype(np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


class ServerProcess(ChildProcess):
    """``python -m serving`` in a subprocess, logging to a file."""

    def __init__(self, args: list, log_path: str):
        env = dict(os.environ, **features.KERAS_ENV, TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        super().__init__("model server", [sys.executable, "-m", "serving", *args], env=env,
                         log_path=log_path, cwd=REPO_ROOT)

    def wait_ready(self, target: str, timeout: float = 180.0):
        """Waits until the gRPC port accepts connections (models are loaded then)."""
        with grpc.insecure_channel(target) as channel:
            self.wait_until(lambda: grpc.channel_ready_future(channel).result(timeout=1.0)
                            or True, timeout, interval=0.0)


def start_server(tmp_path, args: list, timeout: float = 180.0) -> tuple:
    """Starts the project's server with extra flags; returns (process, grpc target, rest url).

    ``timeout`` bounds the wait for the gRPC port (seconds; raise it for many models).
    """
    grpc_port, rest_port = free_port(), free_port()
    process = ServerProcess([f"--port={grpc_port}", f"--rest_api_port={rest_port}", *args],
                            str(tmp_path / f"server-{grpc_port}.log"))
    target = f"localhost:{grpc_port}"
    try:
        process.wait_ready(target, timeout)
    except StartError:
        process.stop()
        raise
    return process, target, f"http://localhost:{rest_port}"




def write_linear_model(export_dir: str, slope: float, intercept: float):
    """Writes a tiny real SavedModel: ``serving_default`` maps ``x`` float [N] to
    ``y = slope * x + intercept`` (plus an unused 16 kB variable, so that its
    variables file is worth damaging in tests)."""
    import tensorflow as tf

    class Linear(tf.Module):
        def __init__(self):
            super().__init__()
            self.slope = tf.Variable(slope, dtype=tf.float32)
            self.intercept = tf.Variable(intercept, dtype=tf.float32)
            self.unused = tf.Variable(tf.range(4096, dtype=tf.float32))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * self.slope + self.intercept}

    module = Linear()
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})


def publish_version(linear_models, base, version, source=None, damage=None) -> str:
    """Copies a reference version of the linear model into base/<version>, optionally
    damaging it first; returns the version directory.

    The copy is made beside the base path and renamed in, so the damage is all
    a poll can ever see.
    """
    staging = str(base) + f".staging-{version}"
    shutil.copytree(linear_models[source or version], staging)
    if damage is not None:
        damage(staging)
    os.rename(staging, os.path.join(base, str(version)))
    return os.path.join(base, str(version))
