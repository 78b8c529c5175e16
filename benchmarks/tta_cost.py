"""Benchmark: what test-time augmentation costs at serving time.

Calls the `serving_default` signature of two pushed models in this process on the same
images, one exported without TTA (the baseline) and one with it, and prints the TTA model's
p50 latency at batch 1 and its throughput at batch 32 as ratios to the baseline's. The
accuracy side of the trade is in each model's training record (`val_accuracy_plain`,
`val_accuracy_tta`). Writes JSON.

    python benchmarks/tta_cost.py --plain serving_model/koa/<v1> --tta serving_model/koa/<v2> \
        --images ../shared/data/kneeKL224/train/2
"""

import argparse
import datetime
import glob
import logging
import os
import sys
import time

from components import features  # noqa: E402
features.select_keras_2()  # before TensorFlow is imported

logger = logging.getLogger("tta_cost")


def _measure(model_dir, images, repeats):
    import numpy as np
    import tensorflow as tf

    from components import features

    serve = tf.saved_model.load(model_dir).signatures[features.SERVING_SIGNATURE]
    single = tf.constant(images[:1])
    batch = tf.constant(images[:32])
    serve(image_bytes=single)  # the first call traces and loads: not measured
    serve(image_bytes=batch)
    latencies = []
    for i in range(repeats):
        start = time.perf_counter()
        serve(image_bytes=tf.constant(images[i % len(images):][:1]))
        latencies.append(time.perf_counter() - start)
    start = time.perf_counter()
    rounds = max(1, repeats // 10)
    for _ in range(rounds):
        serve(image_bytes=batch)
    throughput = rounds * int(batch.shape[0]) / (time.perf_counter() - start)
    return {"p50_ms_batch1": float(np.percentile(latencies, 50) * 1e3),
            "p99_ms_batch1": float(np.percentile(latencies, 99) * 1e3),
            "images_per_second_batch32": throughput}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain", required=True, help="pushed model without TTA (baseline)")
    parser.add_argument("--tta", required=True, help="pushed model with TTA")
    parser.add_argument("--images", required=True, help="folder of PNG/JPEG knee films")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--out", default="benchmarks/results/tta_cost.json")
    args = parser.parse_args(argv)

    from components import atomic_dir
    from koa.cli import setup_logging
    setup_logging()
    files = sorted(glob.glob(os.path.join(args.images, "*.png"))
                   + glob.glob(os.path.join(args.images, "*.jpg")))[:64]
    if len(files) < 32:
        raise SystemExit(f"need at least 32 images in {args.images}, found {len(files)}")
    images = []
    for path in files:
        with open(path, "rb") as f:
            images.append(f.read())

    plain = _measure(args.plain, images, args.repeats)
    tta = _measure(args.tta, images, args.repeats)
    result = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "plain_model": os.path.abspath(args.plain), "tta_model": os.path.abspath(args.tta),
        "plain": plain, "tta": tta,
        "latency_ratio_p50_batch1": tta["p50_ms_batch1"] / plain["p50_ms_batch1"],
        "throughput_ratio_batch32": (tta["images_per_second_batch32"]
                                     / plain["images_per_second_batch32"]),
    }
    logger.info("batch 1 p50: %.1f ms with TTA vs %.1f ms without (ratio %.2f)",
                tta["p50_ms_batch1"], plain["p50_ms_batch1"], result["latency_ratio_p50_batch1"])
    logger.info("batch 32: %.1f images/s with TTA vs %.1f without (ratio %.2f)",
                tta["images_per_second_batch32"], plain["images_per_second_batch32"],
                result["throughput_ratio_batch32"])
    atomic_dir.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
