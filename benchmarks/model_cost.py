"""Benchmark: what a candidate model costs at serving time against a baseline model.

Calls the `serving_default` signature of two exported models in this process on the same
images (e.g. one without test-time augmentation and one with it, or two backbone widths),
in alternating rounds so that a change of load hits both, and prints the candidate's p50
latency at batch 1 and its throughput at batch 32 as ratios to the baseline's (medians over
the rounds). The accuracy side of the trade is in each model's training record
(assets.extra/training_history.json). Writes JSON.

    python benchmarks/model_cost.py --baseline serving_model/koa/<v1> \
        --candidate serving_model/koa/<v2> --images ../shared/data/kneeKL224/train/2
"""

import argparse
import datetime
import glob
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from components import features  # noqa: E402

features.select_keras_2()  # before TensorFlow is imported

logger = logging.getLogger("model_cost")


def serving_function(model_dir):
    """The model's serving signature as a function of a list of encoded images."""
    import tensorflow as tf

    serve = tf.saved_model.load(model_dir).signatures[features.SERVING_SIGNATURE]
    return lambda images: serve(**{features.SERVING_INPUT: tf.constant(images)})


def load_films(folder, limit=64):
    """The encoded bytes of up to `limit` PNG/JPEG films in `folder` (sorted by name).

    Raises:
        SystemExit: if the folder holds fewer than 32 (a batch-32 call needs them).
    """
    files = sorted(glob.glob(os.path.join(folder, "*.png"))
                   + glob.glob(os.path.join(folder, "*.jpg")))[:limit]
    if len(files) < 32:
        raise SystemExit(f"need at least 32 images in {folder}, found {len(files)}")
    films = []
    for path in files:
        with open(path, "rb") as f:
            films.append(f.read())
    return films


def measure(serve, images, repeats):
    """Batch-1 p50/p99 (ms) over `repeats` calls, then batch-32 images/s."""
    import numpy as np

    latencies = []
    for i in range(repeats):
        start = time.perf_counter()
        serve(images[i % len(images):][:1])
        latencies.append(time.perf_counter() - start)
    start = time.perf_counter()
    batches = max(1, repeats // 10)
    for _ in range(batches):
        serve(images[:32])
    throughput = batches * 32 / (time.perf_counter() - start)
    return {"p50_ms_batch1": float(np.percentile(latencies, 50) * 1e3),
            "p99_ms_batch1": float(np.percentile(latencies, 99) * 1e3),
            "images_per_second_batch32": throughput}


def compare(rounds, baseline, candidate):
    """Medians over the rounds of two settings' `measure` figures, the candidate's batch-1
    p50 and batch-32 throughput as ratios to the baseline's, logged.

    Args:
        rounds: setting name -> list of `measure` results, one per round.
        baseline, candidate: the two names in `rounds`.

    Returns:
        {baseline: medians, candidate: medians, "latency_ratio_p50_batch1",
        "throughput_ratio_batch32"}.
    """
    import numpy as np

    keys = ("p50_ms_batch1", "p99_ms_batch1", "images_per_second_batch32")
    medians = {name: {key: float(np.median([r[key] for r in rounds[name]])) for key in keys}
               for name in (baseline, candidate)}
    base, cand = medians[baseline], medians[candidate]
    summary = {
        **medians,
        "latency_ratio_p50_batch1": cand["p50_ms_batch1"] / base["p50_ms_batch1"],
        "throughput_ratio_batch32": (cand["images_per_second_batch32"]
                                     / base["images_per_second_batch32"]),
    }
    logger.info("batch 1 p50: %.1f ms (%s) vs %.1f ms (%s), ratio %.2f", cand["p50_ms_batch1"],
                candidate, base["p50_ms_batch1"], baseline, summary["latency_ratio_p50_batch1"])
    logger.info("batch 32: %.1f images/s (%s) vs %.1f (%s), ratio %.2f",
                cand["images_per_second_batch32"], candidate,
                base["images_per_second_batch32"], baseline, summary["throughput_ratio_batch32"])
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="exported model the ratios are to")
    parser.add_argument("--candidate", required=True, help="exported model to cost")
    parser.add_argument("--images", required=True, help="folder of PNG/JPEG knee films")
    parser.add_argument("--repeats", type=int, default=100, help="batch-1 calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join("build", "benchmarks",
                                                      "model_cost.json"))
    args = parser.parse_args(argv)

    from components import atomic_dir
    from koa.cli import setup_logging
    setup_logging()
    images = load_films(args.images)
    models = {"baseline": serving_function(args.baseline),
              "candidate": serving_function(args.candidate)}
    for serve in models.values():
        serve(images[:1])
        serve(images[:32])
    rounds = {name: [] for name in models}
    for i in range(args.rounds):
        for name, serve in models.items():
            rounds[name].append(measure(serve, images, args.repeats))
        logger.info("round %d/%d: batch-1 p50 %.1f ms (candidate) vs %.1f ms (baseline)",
                    i + 1, args.rounds, rounds["candidate"][-1]["p50_ms_batch1"],
                    rounds["baseline"][-1]["p50_ms_batch1"])
    result = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "baseline_model": os.path.abspath(args.baseline),
        "candidate_model": os.path.abspath(args.candidate),
        "rounds": rounds, **compare(rounds, "baseline", "candidate"),
    }
    atomic_dir.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
