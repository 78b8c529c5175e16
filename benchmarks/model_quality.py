"""Experiment: one full pipeline run on real radiographs with given model settings.

Writes, under the experiment's name, the pipeline Evaluator's figures for the model the
Pusher pushed (accuracy, QWK, MAE, ECE, per-grade recall, confusion matrix), the
calibration and out-of-distribution figures recorded by the Trainer, how the pushed model
scores the non-knee probe images (components/non_knee.py) against the validation knees,
wall times and the hardware. Results of several experiments accumulate in one JSON file.

    python benchmarks/model_quality.py --name softmax --data ../shared/data/kneeKL224 \
        --set weights=../shared/weights/mobilenet_v2_0.35_224_no_top.h5 \
        --set image_size=224 --set head_epochs=2 --set finetune_epochs=8
"""

import argparse
import datetime
import glob
import json
import logging
import os
import platform
import sys
import tempfile
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"

logger = logging.getLogger("model_quality")


def _parse_value(text: str):
    """YAML-like scalars: int, float, bool, else string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _overrides(pairs):
    values = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set needs key=value, got {pair!r}")
        values[key] = _parse_value(value)
    return values


def _probe_scores(version_dir: str, eval_dir: str, image_size: int) -> dict:
    """OOD score of each non-knee probe and the share of validation knees flagged."""
    import numpy as np
    import tensorflow as tf

    from components import features, non_knee

    served = tf.saved_model.load(version_dir)
    serve = served.signatures[features.SERVING_SIGNATURE]
    probes = non_knee.probe_images(size=image_size, seed=0)
    out = serve(image_bytes=tf.constant(list(probes.values())))
    scores = dict(zip(probes, (float(s) for s in out[features.OOD_SCORE_OUTPUT].numpy())))

    files = glob.glob(os.path.join(eval_dir, "*"))
    records = [bytes(r.numpy()) for r in tf.data.TFRecordDataset(files)]
    images = [tf.train.Example.FromString(r).features.feature[features.IMAGE_KEY]
              .bytes_list.value[0] for r in records]
    knee_scores = []
    for start in range(0, len(images), 64):
        batch = serve(image_bytes=tf.constant(images[start:start + 64]))
        knee_scores.extend(batch[features.OOD_SCORE_OUTPUT].numpy().tolist())
    knee_scores = np.array(knee_scores)
    return {
        "probe_scores": scores,
        "probes_flagged": int(sum(s > 1.0 for s in scores.values())),
        "probes_total": len(scores),
        "val_knees_flagged_share": float(np.mean(knee_scores > 1.0)),
        "val_knee_score_percentiles": {p: float(np.percentile(knee_scores, p))
                                       for p in (50, 90, 99)},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="experiment name (key in the JSON)")
    parser.add_argument("--data", required=True, help="graded image folder (e.g. kneeKL224)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="a model setting (params.yaml 'model:' key); repeatable")
    parser.add_argument("--workdir", help="keep the run here (default: a temp dir)")
    parser.add_argument("--out", default="benchmarks/results/model_quality.json")
    args = parser.parse_args(argv)

    from pipeline.cli import setup_logging
    setup_logging()
    from components import evaluation, ingestion
    from components import model as model_lib
    from pipeline import configs, local_runner
    from pipeline import params as params_lib

    model_settings = {"image_size": 224, "batch_size": 32, **_overrides(args.set)}
    params = params_lib.parse({
        "data": {"source": os.path.abspath(args.data)},
        "model": model_settings,
        # Experiments are compared, not gated: every model is pushed (into the workdir).
        "gate": {"accuracy_lower_bound": 0.0, "recall_lower_bounds": [0.0] * 5,
                 "max_accuracy_drop": 1.0},
    })
    workdir = args.workdir or tempfile.mkdtemp(prefix=f"koa-exp-{args.name}-")
    ingested = os.path.join(workdir, configs.INGESTED_DIR)
    start = time.perf_counter()
    ingestion.ingest(args.data, ingested, eval_fraction=params.data.eval_fraction,
                     seed=params.data.seed)
    record = local_runner.run(params, workdir)
    wall = time.perf_counter() - start
    if not record.pushed:
        raise SystemExit(f"run {record.run_id} pushed no model")

    quality = evaluation.load_grade_metrics(record.outputs["Evaluator.evaluation"])
    training = model_lib.read_training_record(
        os.path.join(record.outputs["Trainer.model"], "Format-Serving"))
    stats = training["stats"]
    result = {
        "settings": stats.get("config"),
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hardware": {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                     "processor": platform.processor() or "unknown", "gpu": None},
        "evaluator": {k: v for k, v in quality.items() if k != "failures"},
        "trainer": {k: v for k, v in stats.items() if k != "config"},
        "wall_seconds": {"ingest_and_pipeline": wall,
                         "trainer_component": record.component_seconds.get("Trainer"),
                         **{f"component_{k}": v for k, v in record.component_seconds.items()}},
        "ood": _probe_scores(record.pushed_destination, os.path.join(ingested, "eval"),
                             params.model.image_size),
        "pushed": record.pushed_destination,
    }
    results = {}
    if os.path.isfile(args.out):
        with open(args.out, encoding="utf-8") as f:
            results = json.load(f)
    results[args.name] = result
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f"{args.out}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    os.replace(tmp, args.out)
    shown = {k: quality[k] for k in ("accuracy", "qwk", "mae", "ece", "recall_per_grade")}
    logger.info("experiment %s written to %s: %s; OOD probes flagged %d/%d", args.name,
                args.out, json.dumps(shown), result["ood"]["probes_flagged"],
                result["ood"]["probes_total"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
