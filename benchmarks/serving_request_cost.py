"""CPU cost of one Predict request in the model server's handler path, against the Session run alone.

Measures CPU time, not wall time, so that it means something on a machine that
other work keeps busy. In this process, with the server's own classes:

* ``session``: the in-process baseline of ``benchmarks/serving_latency.py``,
  :meth:`serving.servable.Servable.run` on the decoded image tensor;
* ``handler``: what a gRPC worker thread of ``python -m serving`` runs for a
  Predict apart from gRPC's own code: ``PredictRequest.FromString`` on the
  serialised request, :meth:`serving.prediction.ApiHandler.predict` (metrics
  on) and ``SerializeToString`` of the response.

The two alternate (interleaved, order flipped every pair), each call timed with
the calling thread's CPU clock (``time.thread_time``: the Python work and the
part of the Session run done on that thread) and the process CPU clock
(``time.process_time``: TensorFlow's thread pools as well, noisy at batch 1
because those threads spin while waiting for work). The paired difference
``handler - session`` of caller-thread CPU is the request's cost in our code
and the protobuf library. Not a test; figures depend on the machine.

Usage:
    python benchmarks/serving_request_cost.py [--model-base-path DIR] [--image PNG]
        [--requests N] [--output FILE]
"""

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from components import atomic_dir, features  # noqa: E402
from serving import protos, server_config, tensors  # noqa: E402
from serving.metrics import ServerMetrics  # noqa: E402
from serving.model_manager import ModelManager, scan_versions  # noqa: E402
from serving.prediction import ApiHandler  # noqa: E402

_LOG = logging.getLogger("serving_request_cost")
SHARED_IMAGES = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "kneeKL224-val", "2")
WARMUP = 10


def _image(path: str) -> tuple:
    """(PNG bytes, description): `path`, else the first kneeKL224 validation image of grade 2,
    else a synthetic 224x224 noise PNG."""
    if not path and os.path.isdir(SHARED_IMAGES):
        path = os.path.join(SHARED_IMAGES, sorted(os.listdir(SHARED_IMAGES))[0])
    if path:
        with open(path, "rb") as f:
            return f.read(), os.path.relpath(path, os.path.dirname(REPO_ROOT))
    import io  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224)).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue(), "synthetic 224x224 noise PNG"


def _summary(values: list) -> dict:
    quartiles = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "p25": quartiles[0], "p75": quartiles[2], "n": len(values)}


def measure(handler, servable, request_bytes: bytes, image: bytes, requests: int) -> dict:
    """Interleaved CPU microseconds per call of the two paths; see the module docstring."""
    p = protos.load()
    signature = features.SERVING_SIGNATURE
    aliases = sorted(servable.signature_defs[signature].outputs)
    array = np.array([image], dtype=object)

    def session():
        servable.run(signature, {features.SERVING_INPUT: array}, aliases)

    def handler_path():
        handler.predict(p.predict_pb2.PredictRequest.FromString(request_bytes)).SerializeToString()

    paths = {"session": session, "handler": handler_path}
    for call in paths.values():
        for _ in range(WARMUP):
            call()
    thread_us = {name: [] for name in paths}
    process_us = {name: [] for name in paths}
    order = list(paths)
    for index in range(requests):
        for name in (order if index % 2 == 0 else order[::-1]):
            thread_started, process_started = time.thread_time(), time.process_time()
            paths[name]()
            thread_us[name].append(1e6 * (time.thread_time() - thread_started))
            process_us[name].append(1e6 * (time.process_time() - process_started))
    extra = [h - s for h, s in zip(thread_us["handler"], thread_us["session"])]
    return {
        "caller_thread_cpu_us": {name: _summary(values) for name, values in thread_us.items()},
        "process_cpu_us": {name: _summary(values) for name, values in process_us.items()},
        "handler_minus_session_caller_thread_cpu_us": _summary(extra),
        "ratios": {
            "caller_thread_cpu_handler_vs_session":
                statistics.median(thread_us["handler"]) / statistics.median(thread_us["session"]),
            "process_cpu_handler_vs_session":
                statistics.median(process_us["handler"]) / statistics.median(process_us["session"]),
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model-base-path", default=os.path.join(REPO_ROOT, "serving_model", "koa"),
                        help="a model base path (version folders); by default the pipeline's pushes, "
                             "else an example MobileNetV2 written to a temporary folder")
    parser.add_argument("--image", default="", help="PNG to send (default: a kneeKL224 image)")
    parser.add_argument("--requests", type=int, default=300, help="interleaved pairs to measure")
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "build", "benchmarks",
                                                         "serving_request_cost.json"))
    args = parser.parse_args(argv)
    if args.requests < 4:
        parser.error("--requests must be at least 4 (quartiles of the pairs are reported)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    features.select_keras_2()  # before TensorFlow is imported

    base_path, model_kind = args.model_base_path, "pipeline push"
    if not scan_versions(base_path):
        sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "models"))
        from example_model import write_example_model  # pylint: disable=import-outside-toplevel
        base_path = os.path.join(tempfile.mkdtemp(prefix="serving-cost-"), "koa")
        write_example_model(os.path.join(base_path, "1"), image_size=224, backbone="mobilenet_v2")
        model_kind = "example MobileNetV2 alpha=0.35, random weights"
    image, image_kind = _image(args.image)
    metrics = ServerMetrics()
    manager = ModelManager(server_config.single_model_config("koa", base_path), poll_wait_seconds=0,
                           on_change=metrics.set_loaded_versions)
    if manager.load_initial():
        _LOG.error("No version of %s loaded", base_path)
        return 1
    handler = ApiHandler(manager, metrics=metrics)
    p = protos.load()
    request = p.predict_pb2.PredictRequest()
    request.model_spec.name = "koa"
    request.model_spec.signature_name = features.SERVING_SIGNATURE
    request.inputs[features.SERVING_INPUT].CopyFrom(
        tensors.to_tensor_proto(np.array([image], dtype=object), p.tensor_pb2.TensorProto))
    servable = manager.resolve(request.model_spec)
    try:
        results = measure(handler, servable, request.SerializeToString(), image, args.requests)
    finally:
        manager.stop()
    results.update({"model": {"base_path": base_path, "version": servable.version, "kind": model_kind},
                    "image": {"source": image_kind, "bytes": len(image)},
                    "load_average": os.getloadavg()})
    atomic_dir.write_json(args.output, results)
    _LOG.info("Wrote %s", args.output)
    print(json.dumps({key: results[key] for key in ("handler_minus_session_caller_thread_cpu_us", "ratios")},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
