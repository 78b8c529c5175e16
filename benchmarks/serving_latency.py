"""Model server latency and throughput against in-process inference (writes JSON).

Same model, same machine, same run:

* p50/p99 latency of gRPC Predict and REST predict at batch 1 against calling
  the ``serving_default`` signature in-process (ratio; goal <= 1.10 for gRPC);
* throughput (images/s) at 1, 8 and 32 concurrent single-image clients, with
  and without server-side batching, against in-process batched inference
  (ratio; goal >= 0.90 at 32).

The model is the pipeline's latest push (``serving_model/koa``) when there is
one, otherwise an example MobileNetV2 (random weights, same signatures) written
to a temporary directory. The servers run as subprocesses (``python -m serving``)
on free ports; the clients run in this process. Not a test.

Usage:
    python benchmarks/serving_latency.py [--model-base-path DIR] [--output FILE]
"""

import argparse
import base64
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time

import grpc
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from components import atomic_dir, features  # noqa: E402
from koa.processes import ChildProcess, free_port  # noqa: E402
from serving import protos, tensors  # noqa: E402
from serving.model_manager import scan_versions  # noqa: E402

_LOG = logging.getLogger("serving_latency")
CONCURRENCY = (1, 8, 32)
BATCHING_CONFIG = ("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2000 }\n"
                   "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 1000 }\n")
SHARED_IMAGE = "/work/shared/data/kneeKL224/train/2"


def _image_bytes() -> tuple:
    """Returns (PNG bytes, description): a real knee radiograph if available."""
    if os.path.isdir(SHARED_IMAGE):
        name = sorted(os.listdir(SHARED_IMAGE))[0]
        with open(os.path.join(SHARED_IMAGE, name), "rb") as f:
            return f.read(), f"kneeKL224 train/2/{name}"
    import io  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224)).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue(), "synthetic 224x224 noise PNG"


def _percentiles(seconds: list) -> dict:
    ms = np.array(seconds) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "n": len(ms)}


class _Server(ChildProcess):
    def __init__(self, base_path, extra_args, log_path):
        self.grpc_port, self.rest_port = free_port(), free_port()
        env = dict(os.environ, **features.KERAS_ENV, TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=REPO_ROOT)
        super().__init__("model server", [
            sys.executable, "-m", "serving", f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}", "--model_name=koa",
            f"--model_base_path={base_path}", *extra_args],
            env=env, log_path=log_path, cwd=REPO_ROOT)
        self.target = f"localhost:{self.grpc_port}"
        with grpc.insecure_channel(self.target) as channel:
            self.wait_until(lambda: grpc.channel_ready_future(channel).result(timeout=1) or True,
                            300, interval=0.0)


def _predict_request(p, image, rows=1):
    request = p.predict_pb2.PredictRequest()
    request.model_spec.name = "koa"
    request.model_spec.signature_name = features.SERVING_SIGNATURE
    request.inputs[features.SERVING_INPUT].CopyFrom(
        tensors.to_tensor_proto(np.array([image] * rows, dtype=object), p.tensor_pb2.TensorProto))
    return request


def _grpc_latency(target, image, n, warmup):
    p = protos.load()
    request = _predict_request(p, image)
    times = []
    with grpc.insecure_channel(target) as channel:
        stub = p.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for i in range(warmup + n):
            started = time.perf_counter()
            stub.Predict(request, timeout=60)
            if i >= warmup:
                times.append(time.perf_counter() - started)
    return _percentiles(times)


def _rest_latency(rest_port, image, n, warmup):
    import http.client  # pylint: disable=import-outside-toplevel
    body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]})
    connection = http.client.HTTPConnection("localhost", rest_port, timeout=60)  # keep-alive
    times = []
    for i in range(warmup + n):
        started = time.perf_counter()
        connection.request("POST", "/v1/models/koa:predict", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(payload[:200])
        if i >= warmup:
            times.append(time.perf_counter() - started)
    connection.close()
    return _percentiles(times)


def _grpc_throughput(target, image, clients, seconds):
    p = protos.load()
    request = _predict_request(p, image)
    done = [0] * clients
    errors = []
    stop_at = [0.0]
    barrier = threading.Barrier(clients + 1)

    def run(index):
        with grpc.insecure_channel(target) as channel:
            stub = p.prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(request, timeout=60)  # connect and warm up
            barrier.wait()
            while time.perf_counter() < stop_at[0]:
                try:
                    stub.Predict(request, timeout=60)
                    done[index] += 1
                except grpc.RpcError as e:
                    errors.append(e.code().name)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 3600
    barrier.wait()
    started = time.perf_counter()
    stop_at[0] = started + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {"clients": clients, "images_per_s": sum(done) / elapsed, "requests": sum(done),
            "errors": len(errors)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base-path", default=os.path.join(REPO_ROOT, "serving_model", "koa"))
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "benchmarks", "results",
                                                         "serving_latency.json"))
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--throughput-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    features.select_keras_2()  # before TensorFlow is imported
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    workdir = tempfile.mkdtemp(prefix="serving-bench-")
    base_path = args.model_base_path
    model_kind = "pipeline push"
    if not scan_versions(base_path):
        sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "models"))
        from example_model import write_example_model  # pylint: disable=import-outside-toplevel
        base_path = os.path.join(workdir, "koa")
        write_example_model(os.path.join(base_path, "1"), image_size=224, backbone="mobilenet_v2")
        model_kind = "example MobileNetV2 alpha=0.35, random weights"
    version = max(scan_versions(base_path))
    image, image_kind = _image_bytes()
    n, warmup = args.latency_requests, 20
    results = {"model": {"base_path": base_path, "version": version, "kind": model_kind},
               "image": image_kind, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "tensorflow": tf.__version__}

    _LOG.info("In-process latency and batched throughput (version %d)", version)
    function = tf.saved_model.load(os.path.join(base_path, str(version))).signatures[features.SERVING_SIGNATURE]
    single = tf.constant([image])
    times = []
    for i in range(warmup + n):
        started = time.perf_counter()
        function(image_bytes=single)[features.PROBABILITIES_OUTPUT].numpy()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    results["in_process_latency"] = _percentiles(times)
    batch = tf.constant([image] * 32)
    function(image_bytes=batch)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.throughput_seconds:
        function(image_bytes=batch)[features.PROBABILITIES_OUTPUT].numpy()
        count += 32
    results["in_process_batched_images_per_s"] = count / (time.perf_counter() - started)
    del function

    for label, extra in (("no_batching", []), ("batching", ["--enable_batching",
                                                            f"--batching_parameters_file={workdir}/b.cfg"])):
        with open(os.path.join(workdir, "b.cfg"), "w", encoding="utf-8") as f:
            f.write(BATCHING_CONFIG)
        _LOG.info("Server %s", label)
        server = _Server(base_path, extra, os.path.join(workdir, f"server-{label}.log"))
        try:
            if label == "no_batching":
                results["grpc_latency"] = _grpc_latency(server.target, image, n, warmup)
                results["rest_latency"] = _rest_latency(server.rest_port, image, n, warmup)
            results[f"throughput_{label}"] = [
                _grpc_throughput(server.target, image, clients, args.throughput_seconds)
                for clients in CONCURRENCY]
        finally:
            server.stop()

    in_process = results["in_process_latency"]
    best = results["in_process_batched_images_per_s"]
    results["ratios"] = {
        "grpc_p50_vs_in_process": results["grpc_latency"]["p50_ms"] / in_process["p50_ms"],
        "grpc_p99_vs_in_process": results["grpc_latency"]["p99_ms"] / in_process["p99_ms"],
        "rest_p50_vs_in_process": results["rest_latency"]["p50_ms"] / in_process["p50_ms"],
        "rest_p99_vs_in_process": results["rest_latency"]["p99_ms"] / in_process["p99_ms"],
        **{f"throughput_{label}_{t['clients']}_vs_in_process_batched": t["images_per_s"] / best
           for label in ("no_batching", "batching") for t in results[f"throughput_{label}"]},
    }
    results["goals"] = {"grpc_p50_ratio_max": 1.10, "throughput_32_ratio_min": 0.90}
    atomic_dir.write_json(args.output, results)
    _LOG.info("Wrote %s", args.output)
    print(json.dumps(results["ratios"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
