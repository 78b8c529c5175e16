"""Turns the last run's Evaluator output into DVC metrics and plots files."""

import csv
import logging
import os
from typing import Dict

from components import atomic_dir, evaluation, export, features
from pipeline.run_record import RunRecord

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion.csv"
TRAINING_FILE = "training.csv"


class ReportError(RuntimeError):
    """The run record does not lead to an evaluation."""


def write_report(record: RunRecord, out_dir: str) -> Dict:
    """Writes metrics.json, confusion.csv (one row per eval example) and training.csv.

    Returns:
      The metrics written to metrics.json.
    """
    evaluation_uri = record.outputs.get("Evaluator.evaluation")
    if not evaluation_uri:
        raise ReportError(f"run {record.run_id} has no Evaluator output")
    grade_metrics = evaluation.load_grade_metrics(evaluation_uri)
    problems = evaluation.check_consistency(grade_metrics)
    if problems:
        raise ReportError("Evaluator metrics disagree with its confusion matrix: "
                          + "; ".join(problems))
    flat = {
        "accuracy": grade_metrics["accuracy"],
        "qwk": grade_metrics["qwk"],
        "mae": grade_metrics["mae"],
        "ece": grade_metrics.get("ece"),
        **{f"recall_grade_{g}": r for g, r in enumerate(grade_metrics["recall_per_grade"])},
        "eval_examples": grade_metrics["eval_examples"],
        "blessed": record.blessed,
        "pushed": record.pushed,
        "pushed_version": record.pushed_version,
        "run_id": record.run_id,
    }
    model_dir = record.outputs.get("Trainer.model")
    training = {}
    if model_dir:
        training = export.read_training_record(os.path.join(model_dir, "Format-Serving"))
        stats = training["stats"]
        flat["train_images_per_second"] = stats.get("train_images_per_second")
        flat["train_minutes"] = round(stats.get("train_seconds", 0.0) / 60.0, 2)
        flat["hardware"] = stats.get("hardware")
        if stats.get("selection"):  # model.select_fraction: the epoch restored
            flat["selected_finetune_epoch"] = stats["selection"]["epoch"]
            flat["finetune_epochs_run"] = stats["selection"]["epochs_run"]
        # Offsets are fitted on the validation split they are measured on; this is the
        # estimate on halves they were not fitted on.
        flat["accuracy_cross_fitted"] = stats.get("val_accuracy_offsets_cross_fitted")

    os.makedirs(out_dir, exist_ok=True)
    atomic_dir.write_json(os.path.join(out_dir, METRICS_FILE), flat)
    with open(os.path.join(out_dir, CONFUSION_FILE), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        for actual, row in enumerate(grade_metrics["confusion_matrix"]):
            for predicted, count in enumerate(row):
                names = (features.GRADE_NAMES[actual], features.GRADE_NAMES[predicted])
                writer.writerows([[f"{actual} {names[0]}", f"{predicted} {names[1]}"]] * count)
    history = training.get("history", {})
    with open(os.path.join(out_dir, TRAINING_FILE), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        keys = sorted(history)
        writer.writerow(["epoch"] + keys)
        for epoch in range(max((len(v) for v in history.values()), default=0)):
            writer.writerow([epoch + 1] + [history[k][epoch] for k in keys])
    logger.info("wrote metrics to %s: accuracy %.4f, QWK %.4f, MAE %.4f", out_dir,
                flat["accuracy"] or 0, flat["qwk"] or 0, flat["mae"] or 0)
    return flat

