"""DVC metrics and plots written from the e2e pipeline run."""

import csv
import json

from components import evaluation
from pipeline import report


def test_report_writes_the_evaluator_figures_and_the_experiment_record(pipeline_run, tmp_path):
    flat = report.write_report(pipeline_run.record, str(tmp_path))

    written = json.loads((tmp_path / report.METRICS_FILE).read_text())
    assert written == flat
    evaluated = evaluation.load_grade_metrics(pipeline_run.record.outputs["Evaluator.evaluation"])
    for key in ("accuracy", "qwk", "mae", "ece"):
        assert written[key] == evaluated[key]
    assert [written[f"recall_grade_{g}"] for g in range(5)] == evaluated["recall_per_grade"]
    assert written["train_minutes"] > 0 and "CPU cores" in written["hardware"]
    # The e2e run fits grade offsets, so the cross-fitted estimate is there.
    assert 0.0 <= written["accuracy_cross_fitted"] <= 1.0

    with open(tmp_path / report.CONFUSION_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == evaluated["eval_examples"]
    assert sum(r["actual"] == r["predicted"] for r in rows) == round(
        evaluated["accuracy"] * evaluated["eval_examples"])
    with open(tmp_path / report.TRAINING_FILE, newline="") as f:
        epochs = list(csv.DictReader(f))
    finetune_epochs = pipeline_run.params.model.finetune_epochs
    assert len(epochs) == finetune_epochs and all(e["select_loss"] for e in epochs)
    # The e2e run chooses its epoch on a selection split of the training patients.
    assert written["finetune_epochs_run"] == finetune_epochs
    best = min(range(finetune_epochs), key=lambda e: float(epochs[e]["select_loss"]))
    assert written["selected_finetune_epoch"] == best + 1
