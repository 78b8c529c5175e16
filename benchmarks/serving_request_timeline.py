"""Where the wall time of one gRPC Predict goes, against the same model run in-process (writes JSON).

A client process (spawned, no TensorFlow) sends single-image Predict requests in
sequence to a model server running in this process (``serving.server.ModelServer``,
no batching, the flags' defaults). Every request is stamped with
``time.monotonic_ns`` (``CLOCK_MONOTONIC``, one clock for all processes of the
machine) at six points: the client sends; gRPC's worker thread starts the call (a
``concurrent.futures`` work item: request parsing, our handler, response
serialisation); :meth:`serving.prediction.ApiHandler.predict` starts; the Session run
(:meth:`serving.servable.Servable.run`) starts and ends; ``predict`` returns; the work
item ends; the client has the answer. The medians of the segments between them say
how much of the gap to in-process inference is transport, gRPC's Python layer, our
handler before and after the run, and the run itself.

The in-process baseline is ``benchmarks/serving_latency.py``'s: ``Servable.run`` on the
image's PNG bytes (the same string tensor the request carries) in this process, batch 1,
measured in each round just before the client runs. Rounds are interleaved so that other load moves both sides. Wall time means
something only on an idle machine; say what else ran with ``--note``. Not a test.

Usage:
    python benchmarks/serving_request_timeline.py [--model-base-path DIR] [--requests N]
        [--rounds N] [--output FILE] [--note TEXT]
"""

import argparse
import json
import logging
import multiprocessing
import os
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from components import atomic_dir, features  # noqa: E402
from koa.processes import free_port  # noqa: E402
from serving import protos  # noqa: E402
from serving.model_manager import scan_versions  # noqa: E402

_LOG = logging.getLogger("serving_request_timeline")
WARMUP = 10
SEGMENTS = ("client_to_grpc_worker", "grpc_worker_to_handler", "handler_to_run", "run",
            "run_to_handler_end", "handler_end_to_grpc_worker_end", "grpc_worker_end_to_client")
PREDICT = "/tensorflow.serving.PredictionService/Predict"


def _client(target: str, request_bytes: bytes, requests: int, results) -> None:
    """Sends `requests` Predict calls one after another; puts their (sent, answered) stamps."""
    import grpc  # pylint: disable=import-outside-toplevel

    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(PREDICT)  # bytes in, bytes out: nothing decoded here
        stamps = []
        for index in range(WARMUP + requests):
            sent = time.monotonic_ns()
            call(request_bytes, timeout=60)
            if index >= WARMUP:
                stamps.append((sent, time.monotonic_ns()))
    results.put(stamps)


class _Stamps:
    """Records (start, end) monotonic stamps of every call of a wrapped method."""

    def __init__(self, owner, name: str):
        self.spans = []
        original = getattr(owner, name)

        def stamped(*args, **kwargs):
            started = time.monotonic_ns()
            try:
                return original(*args, **kwargs)
            finally:
                self.spans.append((started, time.monotonic_ns()))

        setattr(owner, name, stamped)

    def within(self, start: int, end: int) -> list:
        return [span for span in self.spans if start <= span[0] <= end]


def _segments(calls, worker, handler, run) -> np.ndarray:
    """[requests, 7] segment lengths (ms) of the calls whose spans were each seen once."""
    rows = []
    for sent, answered in calls:
        found = [stamps.within(sent, answered) for stamps in (worker, handler, run)]
        if any(len(spans) != 1 for spans in found):
            continue  # a health check or warm-up call overlapped; not this request's
        (w0, w1), (h0, h1), (r0, r1) = (spans[0] for spans in found)
        points = (sent, w0, h0, r0, r1, h1, w1, answered)
        rows.append([(b - a) / 1e6 for a, b in zip(points, points[1:])])
    return np.array(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base-path", default=os.path.join(REPO_ROOT, "serving_model", "koa"))
    parser.add_argument("--requests", type=int, default=150, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "benchmarks", "results",
                                                         "serving_request_timeline.json"))
    parser.add_argument("--note", default="", help="what else ran on the machine, recorded in the JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    features.select_keras_2()  # before TensorFlow is imported
    from concurrent.futures import thread as futures_thread  # pylint: disable=import-outside-toplevel

    import serving_latency  # pylint: disable=import-outside-toplevel
    from serving import flags  # pylint: disable=import-outside-toplevel
    from serving.prediction import ApiHandler  # pylint: disable=import-outside-toplevel
    from serving.server import ModelServer  # pylint: disable=import-outside-toplevel
    from serving.servable import Servable  # pylint: disable=import-outside-toplevel

    versions = scan_versions(args.model_base_path)
    if not versions:
        parser.error(f"no SavedModel version under {args.model_base_path}")
    version = max(versions)
    image, image_kind = serving_latency._image_bytes()  # pylint: disable=protected-access
    request_bytes = serving_latency._predict_request(protos.load(), image).SerializeToString()  # pylint: disable=protected-access
    direct = Servable("koa", version, versions[version])
    outputs = sorted(direct.signature_defs[features.SERVING_SIGNATURE].outputs)
    single = {features.SERVING_INPUT: np.array([image], dtype=object)}
    run_direct = direct.run  # bound before the stamps wrap the class's method

    worker = _Stamps(futures_thread._WorkItem, "run")  # pylint: disable=protected-access
    handler = _Stamps(ApiHandler, "predict")
    run = _Stamps(Servable, "run")
    port = free_port()
    server = ModelServer(flags.parse_flags([f"--port={port}", "--model_name=koa",
                                            f"--model_base_path={args.model_base_path}"]))
    server.start()
    context = multiprocessing.get_context("spawn")
    rounds = []
    try:
        for index in range(args.rounds):
            in_process = []
            for call in range(WARMUP + args.requests):
                started = time.perf_counter()
                run_direct(features.SERVING_SIGNATURE, single, outputs)
                if call >= WARMUP:
                    in_process.append(1000.0 * (time.perf_counter() - started))
            for stamps in (worker, handler, run):
                stamps.spans.clear()
            results = context.Queue()
            client = context.Process(target=_client, args=(f"localhost:{port}", request_bytes,
                                                           args.requests, results))
            client.start()
            calls = results.get(timeout=600)
            client.join()
            rows = _segments(calls, worker, handler, run)
            medians = dict(zip(SEGMENTS, np.median(rows, axis=0).tolist()))
            total = float(np.median(rows.sum(axis=1)))
            rounds.append({"in_process_p50_ms": float(np.median(in_process)), "requests_matched": len(rows),
                           "segments_p50_ms": medians, "grpc_p50_ms": total,
                           "grpc_vs_in_process": total / float(np.median(in_process))})
            _LOG.info("round %d of %d: gRPC p50 %.2f ms, in-process %.2f ms, segments %s", index + 1,
                      args.rounds, total, rounds[-1]["in_process_p50_ms"],
                      {k: round(v, 3) for k, v in medians.items()})
    finally:
        server.stop()
    summary = {
        "in_process_p50_ms": float(np.median([r["in_process_p50_ms"] for r in rounds])),
        "grpc_p50_ms": float(np.median([r["grpc_p50_ms"] for r in rounds])),
        "grpc_vs_in_process": float(np.median([r["grpc_vs_in_process"] for r in rounds])),
        "segments_p50_ms": {s: float(np.median([r["segments_p50_ms"][s] for r in rounds])) for s in SEGMENTS},
    }
    # Of each request: our own Python work (the handler outside the run) and gRPC's.
    segments = summary["segments_p50_ms"]
    summary["handler_outside_run_ms"] = segments["handler_to_run"] + segments["run_to_handler_end"]
    summary["grpc_python_in_worker_ms"] = (segments["grpc_worker_to_handler"]
                                           + segments["handler_end_to_grpc_worker_end"])
    summary["transport_ms"] = segments["client_to_grpc_worker"] + segments["grpc_worker_end_to_client"]
    result = {"model": {"base_path": args.model_base_path, "version": version}, "image": image_kind,
              "note": args.note, "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
              "method": {"rounds": args.rounds, "requests_per_round": args.requests, "clock": "CLOCK_MONOTONIC"},
              "summary": summary, "rounds": rounds}
    atomic_dir.write_json(args.output, result)
    _LOG.info("Wrote %s", args.output)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
