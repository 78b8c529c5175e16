"""Helpers for the model server tests: test images and server subprocesses."""

import io
import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
from PIL import Image

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Small enough for 2 cores, large enough to exercise the 1 MB message limit.
OVERSIZE_LIMIT_BYTES = 1024 * 1024


def free_port() -> int:
    """Returns a TCP port that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class ServerProcess:
    """``python -m serving`` in a subprocess, logging to a file."""

    def __init__(self, args: list, log_path: str):
        self.log_path = log_path
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen([sys.executable, "-m", "serving", *args], cwd=REPO_ROOT,
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        """Returns the server's output so far."""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_ready(self, target: str, timeout: float = 180.0):
        """Waits until the gRPC port accepts connections (models are loaded then)."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(target) as channel:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
                try:
                    grpc.channel_ready_future(channel).result(timeout=1.0)
                    return
                except grpc.FutureTimeoutError:
                    continue
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()[-3000:]}")

    def terminate(self):
        """Sends SIGTERM (graceful shutdown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> int:
        """Stops the server gracefully and returns its exit code."""
        self.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code


def start_server(tmp_path, args: list) -> tuple:
    """Starts the project's server with extra flags; returns (process, grpc target, rest url)."""
    grpc_port, rest_port = free_port(), free_port()
    process = ServerProcess([f"--port={grpc_port}", f"--rest_api_port={rest_port}", *args],
                            str(tmp_path / f"server-{grpc_port}.log"))
    target = f"localhost:{grpc_port}"
    try:
        process.wait_ready(target)
    except RuntimeError:
        process.stop()
        raise
    return process, target, f"http://localhost:{rest_port}"


