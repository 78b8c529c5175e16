"""Evaluator configuration (TFMA) and reading its results back as plain numbers.

The gate: overall accuracy and every grade's recall must clear configured lower bounds,
the expected calibration error of the served probabilities must stay under a configured
upper bound, and accuracy may not fall more than a configured margin below the last
blessed model.
"""

import json
import logging
from typing import Dict, List, Sequence

import tensorflow_model_analysis as tfma

from components import features, metrics

logger = logging.getLogger(__name__)

_METRICS_MODULE = metrics.__name__
_CONFUSION_PLOT = "multi_class_confusion_matrix_plot"


def build_eval_config(recall_lower_bounds: Sequence[float], accuracy_lower_bound: float,
                      max_accuracy_drop: float, ece_upper_bound: float = 1.0) -> tfma.EvalConfig:
    """The Evaluator's TFMA config.

    Args:
      recall_lower_bounds: per grade 0..4, the least acceptable recall.
      accuracy_lower_bound: the least acceptable overall accuracy.
      max_accuracy_drop: how far accuracy may fall below the last blessed model's
        (0 = no regression at all). Ignored on the first run, when there is no baseline.
      ece_upper_bound: the largest acceptable expected calibration error (10 equal-width
        confidence bins, components/metrics.py) of the served probabilities; 1.0 lets
        every model through, since ECE lies in [0, 1].

    Returns:
      tfma.EvalConfig for the `from_examples` signature of the candidate model.
    """
    if len(recall_lower_bounds) != features.NUM_GRADES:
        raise ValueError(f"need {features.NUM_GRADES} recall lower bounds, "
                         f"got {len(recall_lower_bounds)}")

    def overall_only(threshold):
        # The gate judges the whole validation set; per-side slices are reported, and
        # too small to gate on.
        return [tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()],
                                             threshold=threshold)]

    def value_gate(**side):
        # lower_bound=x or upper_bound=x: the metric's value must stay on that side of x.
        return overall_only(tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
            **{name: {"value": x} for name, x in side.items()})))

    accuracy_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": accuracy_lower_bound}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -max_accuracy_drop - 1e-9}))

    metric_configs = [
        tfma.MetricConfig(class_name="ExampleCount"),
        tfma.MetricConfig(class_name="SparseCategoricalAccuracy", module="tf_keras.metrics",
                          config=json.dumps({"name": "accuracy"}),
                          per_slice_thresholds=overall_only(accuracy_threshold)),
        # TFMA names custom metrics after their class unless the config says otherwise.
        tfma.MetricConfig(class_name="QuadraticWeightedKappa", module=_METRICS_MODULE,
                          config=json.dumps({"name": "qwk"})),
        tfma.MetricConfig(class_name="MeanAbsoluteGradeError", module=_METRICS_MODULE,
                          config=json.dumps({"name": "mae"})),
        # Calibration of the served probabilities (10 equal-width confidence bins).
        tfma.MetricConfig(class_name="ExpectedCalibrationError", module=_METRICS_MODULE,
                          config=json.dumps({"name": "ece"}),
                          per_slice_thresholds=value_gate(upper_bound=ece_upper_bound)),
        tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
    ]
    for grade, least in enumerate(recall_lower_bounds):
        metric_configs.append(tfma.MetricConfig(
            class_name="GradeRecall", module=_METRICS_MODULE,
            config=json.dumps({"grade": grade, "name": f"recall_grade_{grade}"}),
            per_slice_thresholds=value_gate(lower_bound=least)))

    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=features.EXAMPLES_SIGNATURE,
            label_key=features.LABEL_KEY,
            prediction_key=features.PROBABILITIES_OUTPUT,
            # A plain SavedModel (not a Keras one): TFMA calls the signature directly.
            model_type="tf_generic")],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[features.SIDE_KEY])],
        metrics_specs=[tfma.MetricsSpec(metrics=metric_configs)],
    )


def _overall(records):
    for record in records:
        if not record.slice_key.single_slice_keys:
            return record
    raise ValueError("evaluation has no overall slice")


def load_grade_metrics(evaluation_uri: str) -> Dict:
    """Overall-slice figures of one Evaluator output, for reports and the model card.

    Returns:
      {"accuracy", "qwk", "mae", "ece" (expected calibration error of the served
       probabilities), "recall_per_grade" [5], "confusion_matrix" [5][5] (rows true
       grade, columns argmax grade), "eval_examples", "blessed", "failures"}.
    """
    values = {}
    for item in _overall(tfma.load_metrics(evaluation_uri)).metric_keys_and_values:
        if item.key.is_diff or item.key.model_name == "baseline":
            continue
        values[item.key.name] = item.value.double_value.value

    matrix = [[0] * features.NUM_GRADES for _ in range(features.NUM_GRADES)]
    for plot in _overall(tfma.load_plots(evaluation_uri)).plot_keys_and_values:
        if plot.key.name != _CONFUSION_PLOT or plot.key.model_name == "baseline":
            continue
        # One matrix per threshold; the default single threshold 0.0 is plain argmax.
        for entry in plot.value.multi_class_confusion_matrix_at_thresholds.matrices[0].entries:
            if 0 <= entry.predicted_class_id < features.NUM_GRADES:
                matrix[entry.actual_class_id][entry.predicted_class_id] = int(
                    round(entry.num_weighted_examples))

    validation = tfma.load_validation_result(evaluation_uri)
    recalls = [values.get(f"recall_grade_{g}") for g in range(features.NUM_GRADES)]
    return {
        "accuracy": values.get("accuracy"),
        "qwk": values.get("qwk"),
        "mae": values.get("mae"),
        "ece": values.get("ece"),
        "recall_per_grade": recalls,
        "confusion_matrix": matrix,
        "eval_examples": int(values.get("example_count", 0)),
        "blessed": bool(validation.validation_ok),
        "failures": [_describe(failure)
                     for per_slice in validation.metric_validations_per_slice
                     for failure in per_slice.failures],
    }


def _describe(failure) -> str:
    key = failure.metric_key
    what = f"{key.name} change vs last blessed model" if key.is_diff else key.name
    threshold = failure.metric_threshold
    if threshold.HasField("change_threshold"):
        bound = f"change >= {threshold.change_threshold.absolute.value:.4f}"
    elif threshold.value_threshold.HasField("upper_bound"):
        bound = f"<= {threshold.value_threshold.upper_bound.value:.4f}"
    else:
        bound = f">= {threshold.value_threshold.lower_bound.value:.4f}"
    return f"{what} = {failure.metric_value.double_value.value:.4f}, needs {bound}"


def check_consistency(grade_metrics: Dict) -> List[str]:
    """Problems where TFMA's scalar metrics disagree with its own confusion matrix."""
    matrix = grade_metrics["confusion_matrix"]
    problems = []
    expected = metrics.recall_per_grade(matrix)
    for grade, (got, want) in enumerate(zip(grade_metrics["recall_per_grade"], expected)):
        if got is not None and want == want and abs(got - want) > 1e-6:
            problems.append(f"recall of grade {grade}: metric {got:.6f} != matrix {want:.6f}")
    for name, fn in (("qwk", metrics.quadratic_weighted_kappa),
                     ("mae", metrics.mean_absolute_error)):
        want = fn(matrix)
        got = grade_metrics[name]
        if got is not None and want == want and abs(got - want) > 1e-6:
            problems.append(f"{name}: metric {got:.6f} != matrix {want:.6f}")
    return problems
