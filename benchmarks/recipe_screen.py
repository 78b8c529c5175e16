"""Benchmark: short training runs that screen recipe changes against a baseline recipe.

The full pipeline spends minutes per run on ExampleGen, Transform and the Evaluator. To
find what limits accuracy, this script preprocesses the films once per equalisation mode
with the pipeline's own graph (`components.preprocessing.preprocess_images`, cached as
uint8 arrays under build/recipe_screen/), then trains `components.train.train` for each
variant (ModelConfig overrides on top of a base params file) and scores the validation
split with the Evaluator's metric code (`components.metrics`). Each variant is reported
as ratios to the first one (the baseline) measured in the same run; the chosen recipe is
then confirmed through the pipeline as a DVC experiment.

    python benchmarks/recipe_screen.py --params params.kneeKL224.yaml \\
        --train ../shared/data/kneeKL224/train --val ../shared/data/kneeKL224-val \\
        --variant base '{}' --variant noeq '{"equalisation": "none"}' --finetune-epochs 8

Writes build/recipe_screen/results.json after every variant (a killed run keeps what it
measured).
"""

import argparse
import datetime
import glob
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from components import features  # noqa: E402

features.select_keras_2()  # before TensorFlow is imported

logger = logging.getLogger("recipe_screen")
CACHE_DIR = os.path.join("build", "recipe_screen")


def _files_and_grades(root):
    files, grades = [], []
    for grade in range(5):
        found = sorted(glob.glob(os.path.join(root, str(grade), "*.png")))
        files += found
        grades += [grade] * len(found)
    if not files:
        raise SystemExit(f"no <grade>/*.png films under {root}")
    return files, grades


def _preprocessed(root, size, equalisation):
    """uint8 [N, size, size] films after the pipeline's graph, and int grades [N]."""
    import numpy as np
    import tensorflow as tf

    from components import preprocessing

    name = f"{os.path.basename(os.path.normpath(root))}_{size}_{equalisation}.npz"
    path = os.path.join(CACHE_DIR, name)
    if os.path.exists(path):
        cached = np.load(path)
        return cached["images"], cached["grades"]
    files, grades = _files_and_grades(root)
    logger.info("preprocessing %d films of %s (%s, %d px)", len(files), root, equalisation,
                size)
    fn = tf.function(lambda b: preprocessing.preprocess_images(b, size, equalisation))
    chunks = []
    for start in range(0, len(files), 64):
        data = [tf.io.read_file(f) for f in files[start:start + 64]]
        chunks.append(np.round(fn(tf.stack(data)).numpy()[..., 0] * 255).astype(np.uint8))
    images, grades = np.concatenate(chunks), np.asarray(grades, np.int64)
    os.makedirs(CACHE_DIR, exist_ok=True)
    np.savez(path + ".tmp.npz", images=images, grades=grades)
    os.replace(path + ".tmp.npz", path)
    return images, grades


def _dataset(images, grades, batch_size, shuffle_seed=None):
    import tensorflow as tf

    from components import features

    ds = tf.data.Dataset.from_tensor_slices((images, grades))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(grades), seed=shuffle_seed, reshuffle_each_iteration=True)
    to_input = lambda x, y: ({features.TRANSFORMED_IMAGE_KEY: (  # noqa: E731
        tf.cast(x, tf.float32)[..., None] / 255.0)}, y)
    return ds.batch(batch_size).map(to_input).prefetch(2)


def _scores(logits, labels):
    import numpy as np
    from scipy.special import softmax

    from components import calibration, metrics

    matrix = metrics.confusion_matrix(labels, logits.argmax(1))
    probabilities = softmax(logits, axis=1)
    return {
        "accuracy": float(np.trace(matrix) / matrix.sum()),
        "qwk": metrics.quadratic_weighted_kappa(matrix),
        "mae": metrics.mean_absolute_error(matrix),
        "recall": [round(r, 3) for r in metrics.recall_per_grade(matrix)],
        "ece_uncalibrated": calibration.expected_calibration_error(probabilities, labels),
    }


def _run_variant(base, overrides, data):
    import numpy as np

    from components import post_hoc, train

    config = base.with_overrides(overrides)
    train_images, train_grades, val_images, val_grades = data[config.equalisation]
    train_ds = _dataset(train_images, train_grades, config.batch_size, config.seed)
    val_ds = _dataset(val_images, val_grades, 64)
    counts = np.bincount(train_grades, minlength=5).tolist()
    weights = train.class_weights(counts, config.class_weighting)
    start = time.perf_counter()
    model, history, stats = train.train(config, train_ds, val_ds, weights, len(train_grades))
    _, served, labels, plain = post_hoc.collect(model, val_ds, tta=True)
    return {
        "config": overrides,
        "minutes": (time.perf_counter() - start) / 60,
        "train_images_per_second": stats["train_images"] / max(stats["train_seconds"], 1e-9),
        "final_train_accuracy": history["accuracy"][-1],
        "final_val_accuracy": history["val_accuracy"][-1],
        "best_val_accuracy_epoch": int(np.argmax(history["val_accuracy"])) + 1,
        "val_accuracy_by_epoch": [round(v, 4) for v in history["val_accuracy"]],
        "plain": _scores(plain, labels),
        "tta": _scores(served, labels),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.kneeKL224.yaml")
    parser.add_argument("--train", default="../shared/data/kneeKL224/train")
    parser.add_argument("--val", default="../shared/data/kneeKL224-val")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"),
                        required=True, help="ModelConfig overrides; the first is the baseline")
    parser.add_argument("--head-epochs", type=int, default=None)
    parser.add_argument("--finetune-epochs", type=int, default=None)
    parser.add_argument("--out", default=os.path.join(CACHE_DIR, "results.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from components import atomic_dir
    from pipeline import params as params_lib

    base = params_lib.load(args.params).model
    common = {k: v for k, v in (("head_epochs", args.head_epochs),
                                ("finetune_epochs", args.finetune_epochs)) if v is not None}
    variants = [(name, {**common, **json.loads(text)}) for name, text in args.variant]
    data = {}
    for _, overrides in variants:
        mode = base.with_overrides(overrides).equalisation
        if mode not in data:
            data[mode] = (*_preprocessed(args.train, base.image_size, mode),
                          *_preprocessed(args.val, base.image_size, mode))
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "params": args.params, "train": args.train, "val": args.val, "variants": {}}
    for name, overrides in variants:
        logger.info("variant %s: %s", name, overrides)
        result = _run_variant(base, overrides, data)
        report["variants"][name] = result
        baseline = next(iter(report["variants"].values()))
        for key in ("accuracy", "qwk"):
            result[f"tta_{key}_ratio_to_baseline"] = (
                result["tta"][key] / baseline["tta"][key] if baseline["tta"][key] else None)
        atomic_dir.write_json(args.out, report)
        logger.info("variant %s: %.1f min, train acc %.3f, val acc plain %.3f tta %.3f "
                    "(x%.3f of baseline), QWK %.3f, MAE %.3f, recall %s", name,
                    result["minutes"], result["final_train_accuracy"],
                    result["plain"]["accuracy"], result["tta"]["accuracy"],
                    result["tta_accuracy_ratio_to_baseline"], result["tta"]["qwk"],
                    result["tta"]["mae"], result["tta"]["recall"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
