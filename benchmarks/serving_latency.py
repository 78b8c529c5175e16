"""Model server latency, throughput and CPU cost against in-process inference (writes JSON).

Same model, same machine, same run:

* in-process inference of the SavedModel two ways: TF2 ``tf.saved_model.load``
  (a ``ConcreteFunction`` call) and the server's own path, TF's TF1 loader into a
  ``Session`` (:class:`serving.servable.Servable`): batch-1 latency and
  batch-32 throughput with CPU time per image, with TensorFlow's default
  session config (its thread pools are built once per process, so a servers'
  ``--tensorflow_session_config_file`` cannot be mirrored in this process);
* p50/p99 latency of gRPC Predict and REST predict at batch 1 (one client,
  sequential requests) against in-process batch 1 (goal: gRPC p50 <= 1.10 x);
* the server's fixed cost per request, apart from any model: gRPC Predict p50
  of a 1-value request to a server on TensorFlow Serving's
  ``saved_model_half_plus_two_cpu`` (``../shared/testdata/tfserving``; skipped,
  with the reason logged, when absent) minus the in-process ``Session`` p50 of
  the same signature (:class:`serving.servable.Servable`), and the floor under
  it: the round-trip p50 of a bare grpcio unary echo server in a separate
  process (no TensorFlow) with a request of the same size. Both clients send
  pre-serialised bytes. A model whose in-process p50 is ``t`` then has a gRPC
  p50 ratio of about ``1 + fixed / t`` (the JSON's ``fixed_cost`` section);
* throughput (images/s) at 1, 8 and 32 concurrent single-image gRPC clients
  against ``python -m serving`` with and without server-side batching, against
  in-process batched inference (goal: >= 0.80 at 32 clients with batching),
  with the server's CPU time per image (``utime + stime`` of the server process
  from ``/proc/<pid>/stat`` over the measured window) and the load generator's.

The load comes from several client processes (``multiprocessing``, spawned so
they carry no TensorFlow), each with its own asyncio gRPC channel
(``grpc.aio``) and its share of the concurrent clients. Each client sends the
same PredictRequest, serialised once, and waits for its answer before it sends
the next; the answers are not decoded (their status is checked), so the load
generator costs the shared CPUs little.

The batching server runs with ``--grpc_max_threads=64``: a gRPC thread waits
while its request is in a batch (as in TensorFlow Serving), so the default of
4 threads per CPU would cap a batch at 8 rows on a 2-CPU machine.

Every measurement is repeated in ``--rounds`` interleaved rounds (in-process,
then the servers), and ratios are taken within a round, so that load from
other programs that changes over minutes moves both sides of a ratio; the
JSON has every round and the medians.

The model is the pipeline's latest push (``serving_model/koa``) when there is
one, otherwise an example MobileNetV2 (random weights, same signatures) written
to a temporary directory. The servers run as subprocesses on free ports. Not a
test: figures depend on what else the machine runs (say so with ``--note``).

Usage:
    python benchmarks/serving_latency.py [--model-base-path DIR] [--output FILE]
        [--rounds N] [--seconds S] [--client-processes N] [--note TEXT]
        [--half-plus-two-base-path DIR]
        [--server-arg=--tensorflow_session_config_file=FILE]
    python benchmarks/serving_latency.py --profile FILE   # where the server's CPU goes
"""

import argparse
import asyncio
import base64
import json
import logging
import multiprocessing
import os
import platform
import sys
import tempfile
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
IN_PROCESS_BATCH = 32
BATCHING_CONFIG = ("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2000 }\n"
                   "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 1000 }\n")
SHARED_IMAGE = "/work/shared/data/kneeKL224/train/2"
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
ECHO_METHOD = "/bench.Echo/Echo"
HALF_PLUS_TWO = os.path.join(os.path.dirname(REPO_ROOT), "shared", "testdata", "tfserving",
                             "saved_model_half_plus_two_cpu")
GOALS = {"grpc_p50_ratio_max": 1.10, "throughput_batching_32_ratio_min": 0.80}


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


def _process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        # The command name (field 2) may hold spaces; fields after its ')' are fixed.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Server(ChildProcess):
    def __init__(self, base_path, extra_args, log_path, model_name="koa"):
        self.grpc_port, self.rest_port = free_port(), free_port()
        env = dict(os.environ, **features.KERAS_ENV, TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=REPO_ROOT)
        self.argv = [sys.executable, "-m", "serving", f"--port={self.grpc_port}",
                     f"--rest_api_port={self.rest_port}", f"--model_name={model_name}",
                     f"--model_base_path={base_path}", *extra_args]
        super().__init__("model server", self.argv, env=env, log_path=log_path, cwd=REPO_ROOT)
        self.target = f"localhost:{self.grpc_port}"

    def wait_ready(self):
        """Waits until the server answers on its gRPC port (its model has loaded)."""
        with grpc.insecure_channel(self.target) as channel:
            self.wait_until(lambda: grpc.channel_ready_future(channel).result(timeout=1) or True,
                            900, interval=0.0)


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


# -- Fixed cost per request: half_plus_two and a bare gRPC echo --------------------


def _echo_server_process(ready, stop):
    """A grpcio server answering ECHO_METHOD with the request's bytes (no TensorFlow,
    no protobuf parsing); puts its port on `ready`, serves until `stop` is set."""
    from concurrent import futures  # pylint: disable=import-outside-toplevel

    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port("localhost:0")
    server.start()
    ready.put(port)
    stop.wait()
    server.stop(grace=None)


class _EchoServer:
    """The echo server in a spawned process (so it carries no TensorFlow)."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        ready, self._stop = context.Queue(), context.Event()
        self._process = context.Process(target=_echo_server_process, args=(ready, self._stop), daemon=True)
        self._process.start()
        self.target = f"localhost:{ready.get(timeout=120)}"

    def close(self):
        """Stops the server process."""
        self._stop.set()
        self._process.join(timeout=60)


def _raw_latency(target, method, request_bytes, n, warmup):
    """p50/p99 of sequential unary calls sending pre-serialised bytes (answers not decoded)."""
    times = []
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        for i in range(warmup + n):
            started = time.perf_counter()
            call(request_bytes, timeout=60)
            if i >= warmup:
                times.append(time.perf_counter() - started)
    return _percentiles(times)


class _HalfPlusTwo:
    """TensorFlow Serving's half_plus_two (y = 0.5 x + 2) served and run in-process.

    Args:
        base_path: ``saved_model_half_plus_two_cpu`` (one version directory).
        workdir: where the server's log goes.
        server_args: extra flags for the server.
    """

    NAME = "half_plus_two"

    def __init__(self, base_path, workdir, server_args):
        from serving.servable import Servable  # pylint: disable=import-outside-toplevel

        p = protos.load()
        versions = scan_versions(base_path)  # upstream's directory is 00000123
        self.version = max(versions)
        self.server = _Server(base_path, server_args, os.path.join(workdir, "server-half_plus_two.log"),
                              model_name=self.NAME)
        try:
            self.servable = Servable(self.NAME, self.version, versions[self.version])
        except Exception:
            self.server.stop()
            raise
        request = p.predict_pb2.PredictRequest()
        request.model_spec.name = self.NAME
        request.inputs["x"].CopyFrom(tensors.to_tensor_proto(np.array([2.0], dtype=np.float32),
                                                             p.tensor_pb2.TensorProto))
        self.request_bytes = request.SerializeToString()
        self._x = np.array([2.0], dtype=np.float32)

    def check(self):
        """Raises RuntimeError unless both paths answer y = 3 for x = 2."""
        p = protos.load()
        with grpc.insecure_channel(self.server.target) as channel:
            answer = p.predict_pb2.PredictResponse.FromString(
                channel.unary_unary(PREDICT_METHOD)(self.request_bytes, timeout=60))
        served = list(answer.outputs["y"].float_val)
        local = self.servable.run("serving_default", {"x": self._x}, ["y"])["y"].tolist()
        if served != [3.0] or local != [3.0]:
            raise RuntimeError(f"half_plus_two answered {served} (server) and {local} (in-process), not [3.0]")

    def in_process_latency(self, n, warmup):
        """p50/p99 of the Servable's Session run of the same 1-value request."""
        times = []
        for i in range(warmup + n):
            started = time.perf_counter()
            self.servable.run("serving_default", {"x": self._x}, ["y"])
            if i >= warmup:
                times.append(time.perf_counter() - started)
        return _percentiles(times)


def _measure_fixed_cost(half_plus_two, echo, n, warmup):
    """One round's fixed-cost figures (half_plus_two ones only when it is served)."""
    measured = {"echo_grpc": _raw_latency(echo.target, ECHO_METHOD,
                                          half_plus_two.request_bytes if half_plus_two else b"\0" * 64,
                                          n, warmup)}
    if half_plus_two is not None:
        measured["half_plus_two_grpc"] = _raw_latency(half_plus_two.server.target, PREDICT_METHOD,
                                                      half_plus_two.request_bytes, n, warmup)
        measured["half_plus_two_in_process"] = half_plus_two.in_process_latency(n, warmup)
        measured["server_fixed_cost_ms"] = (measured["half_plus_two_grpc"]["p50_ms"]
                                            - measured["half_plus_two_in_process"]["p50_ms"])
    return measured


def _summarise_fixed_cost(rounds: list, skipped: str) -> dict:
    """Medians over the rounds of the fixed-cost figures, and what they predict for the
    main model's gRPC batch-1 ratio: (fixed cost + model time) / model time."""
    summary = {"echo_grpc_p50_ms": _median([r["fixed_cost"]["echo_grpc"]["p50_ms"] for r in rounds])}
    if skipped:
        summary["half_plus_two_skipped"] = skipped
        return summary
    fixed = _median([r["fixed_cost"]["server_fixed_cost_ms"] for r in rounds])
    summary.update({
        "half_plus_two_grpc_p50_ms": _median([r["fixed_cost"]["half_plus_two_grpc"]["p50_ms"] for r in rounds]),
        "half_plus_two_in_process_p50_ms": _median([r["fixed_cost"]["half_plus_two_in_process"]["p50_ms"]
                                                    for r in rounds]),
        "server_fixed_cost_ms": fixed,
        "server_fixed_cost_above_echo_ms": _median([r["fixed_cost"]["server_fixed_cost_ms"]
                                                    - r["fixed_cost"]["echo_grpc"]["p50_ms"] for r in rounds]),
        # A ratio of at most 1.10 needs a model whose in-process p50 is >= 10 x the fixed cost.
        "min_in_process_p50_ms_for_grpc_ratio_1_10": fixed / (GOALS["grpc_p50_ratio_max"] - 1.0),
        "predicted_grpc_p50_ratio": {
            path: _median([1.0 + r["fixed_cost"]["server_fixed_cost_ms"]
                           / r["in_process"][path]["latency_batch_1"]["p50_ms"] for r in rounds])
            for path in rounds[0]["in_process"]},
    })
    return summary


# -- Load generator (runs in spawned client processes) ----------------------------


async def _client_loop(target, request_bytes, clients, barrier, seconds):
    """One process's share of the clients; returns (answers, errors, CPU seconds)."""
    async with grpc.aio.insecure_channel(target) as channel:
        # No serialiser: the request goes as the bytes given, the answer stays bytes.
        predict = channel.unary_unary(PREDICT_METHOD)
        await asyncio.gather(*(predict(request_bytes, timeout=60) for _ in range(clients)))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, barrier.wait)
        cpu_started = time.process_time()
        stop_at = time.perf_counter() + seconds
        counts = {"answers": 0, "errors": 0}

        async def client():
            while time.perf_counter() < stop_at:
                try:
                    await predict(request_bytes, timeout=60)
                    counts["answers"] += 1
                except grpc.aio.AioRpcError:
                    counts["errors"] += 1

        await asyncio.gather(*(client() for _ in range(clients)))
        return counts["answers"], counts["errors"], time.process_time() - cpu_started


def _client_process(commands, barrier, results):
    """Runs (target, request, clients, seconds) commands until it gets None."""
    while True:
        command = commands.get()
        if command is None:
            return
        target, request_bytes, clients, seconds = command
        if clients:
            results.put(asyncio.run(_client_loop(target, request_bytes, clients, barrier, seconds)))
        else:  # no share this time: only keep the barrier's count
            barrier.wait()
            results.put((0, 0, 0.0))


class _LoadGenerator:
    """Client processes, started once (spawned, so without TensorFlow) and reused."""

    def __init__(self, processes: int):
        context = multiprocessing.get_context("spawn")
        self._barrier = context.Barrier(processes + 1)
        self._results = context.Queue()
        self._commands = [context.Queue() for _ in range(processes)]
        self._workers = [context.Process(target=_client_process, args=(q, self._barrier, self._results),
                                         daemon=True) for q in self._commands]
        for worker in self._workers:
            worker.start()

    def run(self, target, server_pid, request_bytes, clients, seconds):
        """Runs `clients` concurrent clients for `seconds` and measures the server's CPU time."""
        count = len(self._workers)
        shares = [clients // count + (1 if i < clients % count else 0) for i in range(count)]
        for queue, share in zip(self._commands, shares):
            queue.put((target, request_bytes, share, seconds))
        self._barrier.wait(timeout=600)
        cpu_started, started = _process_cpu_seconds(server_pid), time.perf_counter()
        time.sleep(seconds)
        cpu_seconds, elapsed = _process_cpu_seconds(server_pid) - cpu_started, time.perf_counter() - started
        outcomes = [self._results.get(timeout=600) for _ in self._workers]
        answers = sum(o[0] for o in outcomes)
        return {"clients": clients, "client_processes": sum(1 for s in shares if s),
                "images_per_s": answers / seconds, "requests": answers,
                "errors": sum(o[1] for o in outcomes),
                "server_cpu_ms_per_image": 1000.0 * cpu_seconds / max(answers, 1),
                "server_cpu_cores_busy": cpu_seconds / elapsed,
                "client_cpu_ms_per_image": 1000.0 * sum(o[2] for o in outcomes) / max(answers, 1)}

    def close(self):
        """Stops the client processes."""
        for queue in self._commands:
            queue.put(None)
        for worker in self._workers:
            worker.join(timeout=60)


# -- In-process baselines ----------------------------------------------------------


def _measure_in_process(call, image_batch_1, image_batch, n, warmup, seconds):
    """Batch-1 latency and batched throughput (with CPU time per image) of `call`."""
    times = []
    for i in range(warmup + n):
        started = time.perf_counter()
        call(image_batch_1)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    count, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        call(image_batch)
        count += len(image_batch)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"latency_batch_1": _percentiles(times),
            "batched_images_per_s": count / elapsed,
            "cpu_ms_per_image": 1000.0 * cpu / count}


def _in_process_calls(model_dir, image):
    """{path: call(images) -> outputs} for the two ways to run the SavedModel in-process:
    TF2 ``tf.saved_model.load`` and the server's TF1 loader into a Session."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from serving.servable import Servable  # pylint: disable=import-outside-toplevel

    function = tf.saved_model.load(model_dir).signatures[features.SERVING_SIGNATURE]
    outputs = sorted(function.structured_outputs)
    servable = Servable("koa", 0, model_dir)

    def tf2_call(images):
        result = function(**{features.SERVING_INPUT: tf.constant(images)})
        return {name: result[name].numpy() for name in outputs}

    def session_call(images):
        return servable.run(features.SERVING_SIGNATURE, {features.SERVING_INPUT: images}, outputs)

    for call in (tf2_call, session_call):  # first runs optimise the graphs
        call(np.array([image] * IN_PROCESS_BATCH, dtype=object))
    return {"tf2_saved_model_load": tf2_call, "tf1_session_loader": session_call}


# -- Where the server's CPU time goes (--profile) --------------------------------


def _thread_cpu_by_name() -> dict:
    """{thread name: CPU seconds} of this process's OS threads (/proc/self/task)."""
    totals = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
                text = f.read()
        except OSError:
            continue  # the thread ended meanwhile
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return totals


def _profile_server(base_path, server_args, request_bytes, clients, processes, seconds, out_path):
    """Serves in this process under per-thread CPU-time cProfile while `clients` clients
    send Predict for `seconds`; writes the profile text to `out_path` and returns a summary.

    Python threads are profiled per unit of work (each gRPC call on the server's
    thread pool, each batch step), with ``time.thread_time`` as the clock, so the
    figures are CPU time, not waiting. OS threads (gRPC core, TensorFlow's pools,
    Python threads) are also totalled by name from /proc over the window.
    """
    import cProfile  # pylint: disable=import-outside-toplevel
    import io  # pylint: disable=import-outside-toplevel
    import pstats  # pylint: disable=import-outside-toplevel
    import threading  # pylint: disable=import-outside-toplevel
    from concurrent.futures import thread as futures_thread  # pylint: disable=import-outside-toplevel

    from serving import flags  # pylint: disable=import-outside-toplevel
    from serving.batching import BatchScheduler  # pylint: disable=import-outside-toplevel
    from serving.server import ModelServer  # pylint: disable=import-outside-toplevel

    local, profilers, active = threading.local(), [], threading.Event()

    def profiled(function):
        def wrapper(*args, **kwargs):
            if not active.is_set():
                return function(*args, **kwargs)
            profiler = getattr(local, "profiler", None)
            if profiler is None:
                profiler = local.profiler = cProfile.Profile(time.thread_time)
                profilers.append(profiler)
            profiler.enable()
            try:
                return function(*args, **kwargs)
            finally:
                profiler.disable()
        return wrapper

    # Each gRPC call runs as one work item of the server's thread pool (parsing
    # the request, the handler, serialising the answer); batches run in _execute.
    futures_thread._WorkItem.run = profiled(futures_thread._WorkItem.run)  # pylint: disable=protected-access
    BatchScheduler._execute = profiled(BatchScheduler._execute)  # pylint: disable=protected-access
    BatchScheduler._next_batch = profiled(BatchScheduler._next_batch)  # pylint: disable=protected-access
    port = free_port()
    server = ModelServer(flags.parse_flags([f"--port={port}", "--model_name=koa",
                                            f"--model_base_path={base_path}", *server_args]))
    server.start()

    load = _LoadGenerator(processes)
    try:
        target = f"localhost:{port}"
        load.run(target, os.getpid(), request_bytes, clients, 2.0)  # warm up
        before = _thread_cpu_by_name()
        active.set()
        point = load.run(target, os.getpid(), request_bytes, clients, seconds)
        active.clear()
        after = _thread_cpu_by_name()
    finally:
        load.close()
        server.stop()
    stats = None
    for profiler in profilers:
        stats = pstats.Stats(profiler) if stats is None else stats.add(profiler)
    text = io.StringIO()
    if stats is not None:
        stats.stream = text
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(40)
    answers = max(point["requests"], 1)
    threads = {name: round(1000.0 * (after.get(name, 0.0) - before.get(name, 0.0)) / answers, 4)
               for name in sorted(set(after) | set(before))}
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"throughput": point, "cpu_ms_per_image_by_thread_name": threads}, indent=2))
        f.write("\n\n" + text.getvalue())
    return {"throughput": point, "cpu_ms_per_image_by_thread_name": threads,
            "python_cpu_ms_per_image_profiled": 1000.0 * (stats.total_tt if stats else 0.0) / answers}


def _median(values):
    return float(np.median(values))


def _summarise(rounds: list) -> dict:
    """Medians over the rounds of every figure, and of every ratio taken within a round."""
    summary = {}
    for path in rounds[0]["in_process"]:
        summary[f"in_process_{path}"] = {
            "batched_images_per_s": _median([r["in_process"][path]["batched_images_per_s"] for r in rounds]),
            "cpu_ms_per_image": _median([r["in_process"][path]["cpu_ms_per_image"] for r in rounds]),
            "p50_ms_batch_1": _median([r["in_process"][path]["latency_batch_1"]["p50_ms"] for r in rounds]),
        }
    for api in ("grpc", "rest"):
        summary[f"{api}_p50_ms_batch_1"] = _median([r[f"{api}_latency"]["p50_ms"] for r in rounds])
    for label in ("no_batching", "batching"):
        for index, clients in enumerate(CONCURRENCY):
            points = [r[f"throughput_{label}"][index] for r in rounds]
            summary[f"server_{label}_{clients}_clients"] = {
                key: _median([p[key] for p in points])
                for key in ("images_per_s", "server_cpu_ms_per_image", "server_cpu_cores_busy",
                            "client_cpu_ms_per_image")}
    ratios = {}
    for path in rounds[0]["in_process"]:
        def within(numerator, path=path):
            return _median([numerator(r) / r["in_process"][path]["batched_images_per_s"] for r in rounds])

        ratios[path] = {
            "grpc_p50_vs_in_process_p50": _median([r["grpc_latency"]["p50_ms"]
                                                   / r["in_process"][path]["latency_batch_1"]["p50_ms"]
                                                   for r in rounds]),
            "rest_p50_vs_in_process_p50": _median([r["rest_latency"]["p50_ms"]
                                                   / r["in_process"][path]["latency_batch_1"]["p50_ms"]
                                                   for r in rounds]),
            **{f"throughput_{label}_{clients}_vs_in_process_batched":
               within(lambda r, label=label, index=index: r[f"throughput_{label}"][index]["images_per_s"])
               for label in ("no_batching", "batching") for index, clients in enumerate(CONCURRENCY)},
            "server_cpu_per_image_batching_32_vs_in_process_batched": _median(
                [r["throughput_batching"][-1]["server_cpu_ms_per_image"]
                 / r["in_process"][path]["cpu_ms_per_image"] for r in rounds]),
        }
    return {"medians": summary, "ratios": ratios}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base-path", default=os.path.join(REPO_ROOT, "serving_model", "koa"))
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "benchmarks", "results",
                                                         "serving_latency.json"))
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of every measurement; ratios are taken within a "
                             "round and their median is reported")
    parser.add_argument("--latency-requests", type=int, default=100, help="per round and path")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="length of each throughput measurement")
    parser.add_argument("--client-processes", type=int, default=4,
                        help="processes the concurrent clients are spread over")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra flag for both model servers (repeatable)")
    parser.add_argument("--batching-server-arg", action="append", default=None,
                        help="extra flag for the batching server (repeatable; default "
                             "--grpc_max_threads=64, so that 32 clients can join one batch)")
    parser.add_argument("--half-plus-two-base-path", default=HALF_PLUS_TWO,
                        help="TensorFlow Serving's saved_model_half_plus_two_cpu, for the fixed cost "
                             "per request (skipped when it holds no version)")
    parser.add_argument("--note", default="", help="what else ran on the machine, recorded in the JSON")
    parser.add_argument("--profile", metavar="FILE",
                        help="instead: profile a batching server in this process under 32 clients "
                             "and write the CPU-time profile to FILE")
    args = parser.parse_args(argv)
    if args.batching_server_arg is None:
        args.batching_server_arg = ["--grpc_max_threads=64"]
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
    request_bytes = _predict_request(protos.load(), image).SerializeToString()
    with open(os.path.join(workdir, "batching.cfg"), "w", encoding="utf-8") as f:
        f.write(BATCHING_CONFIG)
    batching_args = ["--enable_batching", f"--batching_parameters_file={workdir}/batching.cfg"]
    if args.profile:
        summary = _profile_server(base_path, batching_args + args.batching_server_arg + args.server_arg,
                                  request_bytes, CONCURRENCY[-1], args.client_processes, args.seconds,
                                  args.profile)
        print(json.dumps(summary, indent=2))
        return 0

    results = {"model": {"base_path": base_path, "version": version, "kind": model_kind},
               "image": image_kind,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "load_average_at_start": os.getloadavg()},
               "note": args.note, "tensorflow": tf.__version__, "grpcio": grpc.__version__,
               "method": {"rounds": args.rounds, "seconds_per_throughput_point": args.seconds,
                          "latency_requests_per_round": args.latency_requests,
                          "in_process_batch": IN_PROCESS_BATCH, "batching_config": BATCHING_CONFIG,
                          "load_generator": f"{args.client_processes} spawned processes, grpc.aio, "
                                            "one pre-serialised 1-image PredictRequest per call"}}
    # Both servers load while this process loads its own copies (that takes minutes
    # on a busy machine); an idle server costs nothing while the other is measured.
    servers, load, echo, half_plus_two = {}, _LoadGenerator(args.client_processes), None, None
    skipped = ""
    if not scan_versions(args.half_plus_two_base_path):
        skipped = f"no version of saved_model_half_plus_two_cpu under {args.half_plus_two_base_path}"
        _LOG.warning("Fixed cost per request: half_plus_two skipped (%s); only the echo floor is measured",
                     skipped)
    try:
        echo = _EchoServer()
        if not skipped:
            half_plus_two = _HalfPlusTwo(args.half_plus_two_base_path, workdir, args.server_arg)
            results["server_half_plus_two_argv"] = half_plus_two.server.argv[1:]
        for label, extra in (("no_batching", []), ("batching", batching_args + args.batching_server_arg)):
            servers[label] = _Server(base_path, extra + args.server_arg,
                                     os.path.join(workdir, f"server-{label}.log"))
            results[f"server_{label}_argv"] = servers[label].argv[1:]
        calls = _in_process_calls(os.path.join(base_path, str(version)), image)
        for server in servers.values():
            server.wait_ready()
        if half_plus_two is not None:
            half_plus_two.server.wait_ready()
            half_plus_two.check()
        single = np.array([image], dtype=object)
        batch = np.array([image] * IN_PROCESS_BATCH, dtype=object)
        rounds = []
        for index in range(args.rounds):
            _LOG.info("Round %d of %d", index + 1, args.rounds)
            measured = {"in_process": {path: _measure_in_process(call, single, batch, args.latency_requests,
                                                                 5, args.seconds)
                                       for path, call in calls.items()}}
            target = servers["no_batching"].target
            measured["grpc_latency"] = _grpc_latency(target, image, args.latency_requests, 5)
            measured["rest_latency"] = _rest_latency(servers["no_batching"].rest_port, image,
                                                     args.latency_requests, 5)
            measured["fixed_cost"] = _measure_fixed_cost(half_plus_two, echo, 10 * args.latency_requests, 50)
            for label, server in servers.items():
                measured[f"throughput_{label}"] = [
                    load.run(server.target, server.pid, request_bytes, clients, args.seconds)
                    for clients in CONCURRENCY]
            _LOG.info("in-process %.1f images/s, batching server at 32 clients %.1f images/s",
                      measured["in_process"]["tf1_session_loader"]["batched_images_per_s"],
                      measured["throughput_batching"][-1]["images_per_s"])
            rounds.append(measured)
    finally:
        load.close()
        for server in servers.values():
            server.stop()
        if half_plus_two is not None:
            half_plus_two.server.stop()
        if echo is not None:
            echo.close()
    results.update(_summarise(rounds))
    results["fixed_cost"] = _summarise_fixed_cost(rounds, skipped)
    results["goals"] = GOALS
    results["rounds"] = rounds
    results["machine"]["load_average_at_end"] = os.getloadavg()
    atomic_dir.write_json(args.output, results)
    _LOG.info("Wrote %s", args.output)
    print(json.dumps({"medians": results["medians"], "ratios": results["ratios"],
                      "fixed_cost": results["fixed_cost"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
