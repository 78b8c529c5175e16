"""Benchmark: the full TFX pipeline on real radiographs against a plain Keras loop.

Both train the same model (components.model) with the same settings on the same
ingested files, in the same run, so the pipeline's overhead is a ratio. Quality figures
are the pipeline Evaluator's, on the patient-level validation split.

    python benchmarks/pipeline_vs_keras.py --data ../shared/data/kneeKL224 \
        --weights ../shared/weights/mobilenet_v2_0.35_224_no_top.h5 --out results.json
"""

import argparse
import dataclasses
import glob
import json
import logging
import os
import sys
import tempfile
import time

from components import features  # noqa: E402
features.select_keras_2()  # before TensorFlow is imported

logger = logging.getLogger("benchmark")


def _plain_keras(ingested: str, config) -> dict:
    """tf.data straight from the ingested TFRecords + Keras fit; no TFX, no Beam."""
    import tensorflow as tf

    from components import features, preprocessing, train

    spec = {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
            features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}

    def _decode(parsed):
        images = preprocessing.preprocess_images(parsed[features.IMAGE_KEY], config.image_size,
                                                      config.equalisation)
        return images, parsed[features.LABEL_KEY]

    def dataset(split, shuffle):
        files = glob.glob(os.path.join(ingested, split, "*"))
        ds = tf.data.TFRecordDataset(files)
        if shuffle:
            ds = ds.shuffle(2048, seed=config.seed)
        ds = ds.batch(config.batch_size).map(
            lambda records: _decode(tf.io.parse_example(records, spec)),
            num_parallel_calls=tf.data.AUTOTUNE)
        return ds.cache().prefetch(tf.data.AUTOTUNE)

    start = time.perf_counter()
    train_ds, eval_ds = dataset(features.TRAIN_SPLIT, True), dataset(features.EVAL_SPLIT, False)
    counts = [0] * features.NUM_GRADES
    for _, labels in train_ds:
        for label in labels.numpy():
            counts[int(label)] += 1
    trained, history, stats = train.train(
        config, train_ds, eval_ds, train.class_weights(counts, config.class_weighting),
        sum(counts))
    wall = time.perf_counter() - start
    return {
        "wall_seconds": wall,
        "train_images_per_second": stats["train_images"] / stats["train_seconds"],
        "val_accuracy_last_epoch": history["val_accuracy"][-1],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="graded image folder (e.g. kneeKL224)")
    parser.add_argument("--weights", default="imagenet", help="backbone weights (.h5 or imagenet)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--head-epochs", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=6)
    parser.add_argument("--workdir", help="keep the run here (default: a temp dir)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/pipeline_vs_keras.json")
    args = parser.parse_args(argv)

    from koa.cli import setup_logging
    setup_logging()
    from components import atomic_dir, evaluation, ingestion
    from components import export
    from pipeline import configs, local_runner
    from pipeline import params as params_lib

    workdir = args.workdir or tempfile.mkdtemp(prefix="koa-bench-")
    ingested = os.path.join(workdir, configs.INGESTED_DIR)
    params = params_lib.parse({
        "data": {"source": args.data},
        "model": {"image_size": args.image_size, "alpha": args.alpha, "weights": args.weights,
                  "head_epochs": args.head_epochs, "finetune_epochs": args.finetune_epochs,
                  "batch_size": 32, "head_lr": 1e-3, "finetune_lr": 3e-4,
                  "class_weighting": "sqrt"},
        "gate": {"accuracy_lower_bound": 0.0, "recall_lower_bounds": [0.0] * 5,
                 "max_accuracy_drop": 1.0},
    })

    logger.info("ingesting %s into %s", args.data, ingested)
    start = time.perf_counter()
    report = ingestion.ingest(args.data, ingested, eval_fraction=params.data.eval_fraction,
                              seed=params.data.seed)
    ingest_seconds = time.perf_counter() - start

    logger.info("running the TFX pipeline")
    start = time.perf_counter()
    record = local_runner.run(params, workdir)
    pipeline_seconds = time.perf_counter() - start
    quality = evaluation.load_grade_metrics(record.outputs["Evaluator.evaluation"])
    training = export.read_training_record(
        os.path.join(record.outputs["Trainer.model"], "Format-Serving"))
    total = report.total_images
    seconds = record.component_seconds
    result = {
        "config": {**dataclasses.asdict(params.model), "data": args.data,
                   "train_images": sum(report.counts["train"].values()),
                   "eval_images": sum(report.counts["eval"].values()),
                   "cpu_count": os.cpu_count()},
        "pipeline": {
            "wall_seconds": pipeline_seconds,
            "component_seconds": seconds,
            "ingest_images_per_second": total / ingest_seconds,
            "examplegen_transform_images_per_second":
                total / (seconds["ImportExampleGen"] + seconds["Transform"]),
            "trainer_images_per_second": training["stats"]["train_images_per_second"],
            "pushed": record.pushed,
        },
        "quality": {k: v for k, v in quality.items() if k != "failures"},
    }
    if not args.skip_baseline:
        logger.info("training the same model with a plain tf.data + Keras loop")
        baseline = _plain_keras(ingested, params.model)
        result["baseline_plain_keras"] = baseline
        result["ratios"] = {
            "pipeline_wall_over_keras_wall": pipeline_seconds / baseline["wall_seconds"],
            "trainer_images_per_second_over_keras":
                result["pipeline"]["trainer_images_per_second"]
                / baseline["train_images_per_second"],
        }
    atomic_dir.write_json(args.out, result)
    logger.info("results written to %s:\n%s", args.out, json.dumps(
        {"quality": result["quality"], "ratios": result.get("ratios")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
