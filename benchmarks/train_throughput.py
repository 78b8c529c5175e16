"""Benchmark: training images/s of the KL-grade model on this machine, per configuration.

Times bare Keras train steps (batch 32, random films, the project's `build_model`) for
each configuration in a fresh process, and prints images/s as ratios to the first
configuration (the baseline) measured in the same run. A configuration is the backbone
width (alpha), the image size, the Keras mixed-precision policy (`float32` or
`mixed_bfloat16`), the first trainable backbone layer (`finetune_from`: layers before it
stay frozen, so the backward pass stops there) and the memory allocator the process runs with (`glibc`, or tcmalloc /
jemalloc preloaded: TensorFlow frees and re-allocates its activation buffers every step,
and glibc returns them to the kernel, so each step pays page faults for them again).

    python benchmarks/train_throughput.py --config 0.35,224,float32,glibc \\
        --config 0.35,224,float32,tcmalloc --config 0.35,224,float32,tcmalloc,27 \\
        --config 1.0,224,float32,tcmalloc

The children inherit TF_ENABLE_ONEDNN_OPTS (TensorFlow leaves oneDNN off on AMD CPUs; set it
to 1 to measure oneDNN's kernels, which `mixed_bfloat16` needs for AVX-512 BF16); the JSON
records its value.

Writes build/benchmarks/train_throughput.json.
"""

import argparse
import datetime
import json
import logging
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
logger = logging.getLogger("train_throughput")

ALLOCATORS = {
    "glibc": None,
    "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
}


def _measure(alpha: float, size: int, precision: str, finetune_from: int, steps: int,
             batch: int) -> dict:
    """Runs in the child process: images/s of `steps` train steps after 3 warm-up steps."""
    from components import features

    features.select_keras_2()
    import numpy as np
    import tensorflow as tf

    from components.model import build_model
    from components.model_config import ModelConfig

    tf.keras.mixed_precision.set_global_policy(precision)
    model = build_model(ModelConfig(image_size=size, alpha=alpha, weights="none"))
    for layer in model.get_layer("backbone").layers[:finetune_from]:
        layer.trainable = False
    model.compile(tf.keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = {features.TRANSFORMED_IMAGE_KEY: rng.random((batch, size, size, 1), np.float32)}
    labels = rng.integers(0, features.NUM_GRADES, batch)
    for _ in range(3):
        model.train_on_batch(images, labels)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(images, labels)
    seconds = time.perf_counter() - start
    return {"images_per_second": steps * batch / seconds, "final_loss": float(loss)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", default=[],
                        help="alpha,size,precision,allocator[,finetune_from]; the first is "
                             "the baseline")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(REPO, "build", "benchmarks",
                                                      "train_throughput.json"))
    args = parser.parse_args(argv)
    if args.child:
        alpha, size, precision, finetune_from = args.child.split(",")
        result = _measure(float(alpha), int(size), precision, int(finetune_from), args.steps,
                          args.batch)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    if not args.config:
        parser.error("give at least one --config")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from components import atomic_dir

    results = []
    for config in args.config:
        alpha, size, precision, allocator, *rest = config.split(",")
        finetune_from = int(rest[0]) if rest else 0
        if allocator not in ALLOCATORS:
            parser.error(f"allocator must be one of {sorted(ALLOCATORS)}, got {allocator!r}")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        if ALLOCATORS[allocator]:
            if not os.path.exists(ALLOCATORS[allocator]):
                parser.error(f"{allocator} is not installed ({ALLOCATORS[allocator]})")
            env["LD_PRELOAD"] = ALLOCATORS[allocator]
        logger.info("measuring %s (%d steps of %d)", config, args.steps, args.batch)
        child = subprocess.run(
            [sys.executable, __file__, "--child", f"{alpha},{size},{precision},{finetune_from}",
             "--steps", str(args.steps), "--batch", str(args.batch)],
            env=env, capture_output=True, text=True, check=True)
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        result = {"alpha": float(alpha), "image_size": int(size), "precision": precision,
                  "allocator": allocator, "finetune_from": finetune_from, **measured}
        result["ratio_to_baseline"] = (result["images_per_second"]
                                       / (results or [result])[0]["images_per_second"])
        results.append(result)
        logger.info("%s: %.1f images/s, %.2fx the baseline", config,
                    result["images_per_second"], result["ratio_to_baseline"])
    atomic_dir.write_json(args.out, {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu_cores": len(os.sched_getaffinity(0)), "batch": args.batch, "steps": args.steps,
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
