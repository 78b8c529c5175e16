"""Benchmark: one exported model served with oneDNN off and on, on this machine.

TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it loads, and its default depends
on the CPU (on for x86 CPUs with AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX, off
otherwise). Whether oneDNN helps or hurts a served model has differed between this
project's machines (docs/model.md, rounds 14 and 16), so measure it where the model
server runs. Each round starts one process per setting, off then on, each loading the
model, warming it up and timing `serving_default` as ``benchmarks/model_cost.py`` does
(batch-1 p50/p99, batch-32 images/s); prints the "on" figures as ratios to the "off"
ones (medians over the rounds) and TensorFlow's default here. Writes JSON.

    python benchmarks/onednn_serving.py --model serving_model/koa/<version> \\
        --images ../shared/data/kneeKL224-val/2
"""

import argparse
import datetime
import json
import logging
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.model_cost import compare, load_films, measure, serving_function  # noqa: E402
from components import features  # noqa: E402

logger = logging.getLogger("onednn_serving")
_SETTINGS = {"off": "0", "on": "1"}
_CPU_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")


def _worker(model: str, images: str, repeats: int) -> dict:
    """Runs in a child process with TF_ENABLE_ONEDNN_OPTS already set."""
    features.select_keras_2()
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=import-outside-toplevel

    films = load_films(images)
    serve = serving_function(model)
    serve(films[:1])
    serve(films[:32])
    return {"onednn_enabled": bool(_pywrap_util_port.IsMklEnabled()),
            **measure(serve, films, repeats)}


def _run_worker(args, setting: str) -> dict:
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=_SETTINGS[setting], TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--model", args.model,
               "--images", args.images, "--repeats", str(args.repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {setting} worker failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _default_here() -> bool:
    """Whether TensorFlow turns oneDNN on here when the variable is unset."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    code = ("from tensorflow.python.util import _pywrap_util_port as p; "
            "print(bool(p.IsMklEnabled()))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True)
    return done.stdout.strip().splitlines()[-1] == "True"


def _cpu_flags() -> list:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in _CPU_FLAGS if flag in flags]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="exported SavedModel folder")
    parser.add_argument("--images", required=True, help="folder of PNG/JPEG knee films")
    parser.add_argument("--repeats", type=int, default=50, help="batch-1 calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join("build", "benchmarks",
                                                      "onednn_serving.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.model, args.images, args.repeats)))
        return 0

    from components import atomic_dir
    from koa.cli import setup_logging
    setup_logging()
    default_on = _default_here()
    logger.info("TensorFlow's default here: oneDNN %s (CPU flags %s)",
                "on" if default_on else "off", ", ".join(_cpu_flags()) or "none of the listed")
    rounds = {setting: [] for setting in _SETTINGS}
    for i in range(args.rounds):
        for setting in _SETTINGS:
            rounds[setting].append(_run_worker(args, setting))
        logger.info("round %d/%d: batch-1 p50 %.1f ms on vs %.1f ms off", i + 1, args.rounds,
                    rounds["on"][-1]["p50_ms_batch1"], rounds["off"][-1]["p50_ms_batch1"])
    result = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": os.path.abspath(args.model),
        "cpu_flags": _cpu_flags(), "onednn_default_on": default_on,
        "load_average_at_end": list(os.getloadavg()),
        # Ratios of "on" to "off".
        "rounds": rounds, **compare(rounds, "off", "on"),
    }
    atomic_dir.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
