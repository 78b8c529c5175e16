"""Web UI latency and load benchmark (prints JSON; not a test).

Same model, same machine, same run:

* upload -> result latency (p50/p99) through the deployed web app (waitress,
  ``python -m webapp serve``) against a direct gRPC call of the same image:
  - clinician page flow: POST /predictions (with Grad-CAM) + GET the result page,
    compared with ``ServingClient.predict(explain=True)``;
  - JSON API: POST /api/v1/predictions, compared with ``ServingClient.predict()``;
  The ratio goal is <= 1.30.
* 20 concurrent users doing the page flow for a minute: throughput and errors (goal 0).

By default it writes a MobileNetV2-sized example model (``tests/models/example_model.py``,
random weights: realistic cost, meaningless grades), starts the project's model
server and the web app on loopback ports, and stops both at the end. Point it at
a running model server with ``--serving-target`` and ``--model-base-path``.

Usage:
    python benchmarks/webapp_latency.py [--requests 100] [--users 20] [--duration 60]
        [--output results.json]
"""

import argparse
import concurrent.futures
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional

import numpy as np
import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from components import features  # noqa: E402
from koa.processes import ChildProcess, free_port  # noqa: E402
from serving.client import ServingClient  # noqa: E402

logger = logging.getLogger("webapp_latency")

ADMIN = ("bench-admin", "bench-admin-password")
_CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
_TOKEN_RE = re.compile(r'data-testid="new-token">([^<]+)<')
RATIO_GOAL = 1.30


def _env(extra: dict) -> dict:
    env = dict(os.environ)
    env.update(features.KERAS_ENV, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _write_model(base_path: str, backbone: str, image_size: int) -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests/models'); from example_model import write_example_model; "
        f"write_example_model(sys.argv[1], backbone={backbone!r}, image_size={image_size})"
    )
    subprocess.run(
        [sys.executable, "-c", code, os.path.join(base_path, "1")],
        env=_env({}),
        check=True,
        cwd=REPO,
        timeout=600,
    )


def _start_model_server(procs, base_path: str, workdir: str) -> str:
    port, rest = free_port(), free_port()
    proc = ChildProcess(
        "model server",
        [sys.executable, "-m", "serving", f"--port={port}", f"--rest_api_port={rest}",
         "--model_name=koa", f"--model_base_path={base_path}"],
        env=_env({}), log_path=os.path.join(workdir, "serving.log"), cwd=REPO,
    )
    procs.append(proc)
    target = f"127.0.0.1:{port}"
    client = ServingClient(target, "koa", timeout=2.0, retries=0)

    try:
        proc.wait_until(lambda: any(s.state == "AVAILABLE" for s in client.model_status()), 300)
    finally:
        client.close()
    return target


def _start_web(procs, target: str, base_path: str, workdir: str, threads: int) -> str:
    env = _env(
        {
            "SECRET_KEY": os.urandom(32).hex(),
            "DATABASE_URL": f"sqlite:///{workdir}/bench.sqlite",
            "KOA_SERVING_TARGET": target,
            "KOA_MODEL_NAME": "koa",
            "KOA_MODEL_BASE_PATH": base_path,
            # Plain HTTP on loopback with a non-browser client: allow the cookie over http.
            "KOA_INSECURE_COOKIES": "1",
        }
    )
    for argv, stdin in (
        (["upgrade-db"], None),
        (["create-admin", "--username", ADMIN[0], "--password-stdin"], ADMIN[1] + "\n"),
    ):
        subprocess.run(
            [sys.executable, "-m", "webapp", *argv], env=env, input=stdin, text=True,
            check=True, cwd=workdir, capture_output=True, timeout=120,
        )
    port = free_port()
    proc = ChildProcess(
        "web app",
        [sys.executable, "-m", "webapp", "serve", "--port", str(port), "--threads", str(threads)],
        env=env, log_path=os.path.join(workdir, "web.log"), cwd=REPO,
    )
    procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    proc.wait_until(lambda: requests.get(url + "/healthz", timeout=2).status_code == 200, 120)
    return url


def _signed_in_session(url: str) -> requests.Session:
    session = requests.Session()
    token = _CSRF_RE.search(session.get(url + "/auth/login", timeout=30).text).group(1)
    response = session.post(
        url + "/auth/login",
        data={"username": ADMIN[0], "password": ADMIN[1], "csrf_token": token},
        timeout=30,
        allow_redirects=False,
    )
    if response.status_code != 302:
        raise RuntimeError(f"benchmark sign-in failed with HTTP {response.status_code}")
    return session


def _page_token(session: requests.Session, url: str) -> str:
    return _CSRF_RE.search(session.get(url + "/", timeout=30).text).group(1)


def _api_token(session: requests.Session, url: str) -> str:
    token = _CSRF_RE.search(session.get(url + "/account/tokens", timeout=30).text).group(1)
    page = session.post(url + "/account/tokens", data={"name": "bench", "csrf_token": token}, timeout=30)
    return _TOKEN_RE.search(page.text).group(1)


def _page_flow(session: requests.Session, url: str, csrf: str, image: bytes) -> None:
    """Upload through the clinician page, then load the result page it redirects to."""
    response = session.post(
        url + "/predictions",
        # Every upload names the knee's side (PNGs carry no laterality).
        data={"csrf_token": csrf, "side": "L"},
        files={"files": ("knee.png", image, "image/png")},
        timeout=60,
        allow_redirects=False,
    )
    if response.status_code != 303:
        raise RuntimeError(f"upload answered HTTP {response.status_code}")
    result = session.get(url + response.headers["Location"], timeout=60)
    if result.status_code != 200 or 'data-testid="grade"' not in result.text:
        raise RuntimeError(f"result page answered HTTP {result.status_code} without a grade")


def _api_flow(http: requests.Session, url: str, api_token: str, image: bytes) -> None:
    response = http.post(
        url + "/api/v1/predictions?side=L",
        data=image,
        headers={"Authorization": f"Bearer {api_token}", "Content-Type": "image/png"},
        timeout=60,
    )
    if response.status_code != 201:
        raise RuntimeError(f"API answered HTTP {response.status_code}")


def _percentiles(samples: List[float]) -> dict:
    ms = np.asarray(samples) * 1000.0
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


def measure_latency(url: str, target: str, image: bytes, requests_count: int, warmup: int) -> dict:
    """Interleaves the four paths request by request so drift hits all of them alike."""
    session = _signed_in_session(url)
    csrf = _page_token(session, url)
    api_token = _api_token(session, url)
    client = ServingClient(target, "koa", timeout=60.0, retries=0)
    # Keep-alive for the API too, as the gRPC client keeps its channel open.
    api_http = requests.Session()
    paths = {
        "grpc_predict": lambda: client.predict(image),
        "grpc_predict_explain": lambda: client.predict(image, explain=True),
        "web_api_upload": lambda: _api_flow(api_http, url, api_token, image),
        "web_page_upload_and_result": lambda: _page_flow(session, url, csrf, image),
    }
    samples = {name: [] for name in paths}
    try:
        for i in range(warmup + requests_count):
            for name, call in paths.items():
                start = time.perf_counter()
                call()
                elapsed = time.perf_counter() - start
                if i >= warmup:
                    samples[name].append(elapsed)
            if (i + 1) % 25 == 0:
                logger.info("latency: %d/%d rounds", i + 1, warmup + requests_count)
    finally:
        client.close()
        api_http.close()
    stats = {name: _percentiles(values) for name, values in samples.items()}

    def ratio(web, grpc):
        return {
            "p50": round(stats[web]["p50_ms"] / stats[grpc]["p50_ms"], 3),
            "p99": round(stats[web]["p99_ms"] / stats[grpc]["p99_ms"], 3),
        }

    stats["ratios"] = {
        "page_flow_vs_grpc_explain": ratio("web_page_upload_and_result", "grpc_predict_explain"),
        "api_vs_grpc": ratio("web_api_upload", "grpc_predict"),
        "goal_max": RATIO_GOAL,
    }
    return stats


def measure_load(url: str, image: bytes, users: int, duration: float, max_per_user: int) -> dict:
    """``users`` threads, each a signed-in clinician uploading and reading results."""
    stop_at = time.monotonic() + duration
    lock = threading.Lock()
    latencies: List[float] = []
    errors: List[str] = []

    def user(index: int) -> int:
        try:
            session = _signed_in_session(url)
            csrf = _page_token(session, url)
        except (requests.RequestException, RuntimeError, AttributeError) as e:
            with lock:
                errors.append(f"user {index} sign-in: {e}")
            return 0
        done = 0
        while time.monotonic() < stop_at and done < max_per_user:
            start = time.perf_counter()
            try:
                _page_flow(session, url, csrf, image)
            except (requests.RequestException, RuntimeError) as e:
                with lock:
                    errors.append(f"user {index}: {e}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
            done += 1
        return done

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=users) as pool:
        completed = sum(pool.map(user, range(users)))
    elapsed = time.monotonic() - started
    return {
        "users": users,
        "duration_s": round(elapsed, 1),
        "completed": completed,
        "throughput_per_s": round(completed / elapsed, 2),
        "errors": len(errors),
        "error_examples": errors[:5],
        "latency": _percentiles(latencies) if latencies else None,
    }


def _benchmark_image(path: Optional[str]) -> tuple:
    if path:
        with open(path, "rb") as f:
            return f.read(), path
    shared = os.path.join(REPO, "..", "shared", "data", "kneeKL224", "train", "2")
    if os.path.isdir(shared):
        name = sorted(n for n in os.listdir(shared) if n.endswith(".png"))[0]
        with open(os.path.join(shared, name), "rb") as f:
            return f.read(), f"shared kneeKL224 train/2/{name}"
    from components import synthetic

    out = tempfile.mkdtemp(prefix="koa-bench-synthetic-")
    synthetic.generate(os.path.join(out, "set"), patients=1, size=224, seed=1)
    first = sorted(p for p in __import__("pathlib").Path(out).rglob("*.png"))[0]
    return first.read_bytes(), "synthetic phantom (components.synthetic)"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serving-target", help="use this running model server (host:port)")
    parser.add_argument("--model-base-path", help="its model base path (for model cards)")
    parser.add_argument("--backbone", default="mobilenet_v2", choices=("mobilenet_v2", "linear"))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--image", help="PNG to upload (default: a real or synthetic knee)")
    parser.add_argument("--requests", type=int, default=100, help="latency samples per path")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0, help="load phase seconds")
    parser.add_argument("--max-per-user", type=int, default=10_000, help="bound on each user's requests")
    parser.add_argument("--web-threads", type=int, default=8)
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    image, image_source = _benchmark_image(args.image)
    procs: List[ChildProcess] = []
    workdir = tempfile.mkdtemp(prefix="koa-webapp-bench-")
    try:
        if args.serving_target:
            target, base_path = args.serving_target, args.model_base_path
            model_desc = "external server"
        else:
            base_path = os.path.join(workdir, "models", "koa")
            logger.info("writing %s example model to %s", args.backbone, base_path)
            _write_model(base_path, args.backbone, args.image_size)
            target = _start_model_server(procs, base_path, workdir)
            model_desc = f"tests/models/example_model.py {args.backbone} {args.image_size}px (random weights)"
        url = _start_web(procs, target, base_path or "", workdir, args.web_threads)
        logger.info("web app at %s, model server at %s", url, target)
        latency = measure_latency(url, target, image, args.requests, args.warmup)
        logger.info("latency done; load phase: %d users for %.0fs", args.users, args.duration)
        load = measure_load(url, image, args.users, args.duration, args.max_per_user)
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=30)
    result = {
        "benchmark": "webapp_latency",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "model": model_desc,
        "image": {"source": image_source, "bytes": len(image)},
        "web": {"server": "waitress", "threads": args.web_threads, "database": "sqlite"},
        "latency": latency,
        "load": load,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
