"""One real pipeline run on a tiny synthetic set, and what it must have produced."""

import dataclasses
import glob
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from PIL import Image

from components import evaluation, features, metrics, preprocessing
from components.serving_pusher import model_card_path
from pipeline import configs, local_runner
from conftest import tiny_params

COMPONENTS = {"ImportExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
              "AnomalyGate", "Transform", "Trainer", "latest_blessed_model_resolver",
              "Evaluator", "ServingPusher"}


def _eval_examples(run):
    files = glob.glob(os.path.join(run.record.outputs["ImportExampleGen.examples"],
                                   "Split-eval", "*"))
    return [bytes(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _feature(example: bytes, key: str):
    parsed = tf.train.Example.FromString(example).features.feature[key]
    return (parsed.bytes_list.value or parsed.int64_list.value)[0]


@pytest.fixture(scope="module")
def pushed(pipeline_run):
    return tf.saved_model.load(pipeline_run.record.pushed_destination)


def test_every_component_ran_and_the_model_was_pushed(pipeline_run):
    record = pipeline_run.record
    assert set(record.component_seconds) == COMPONENTS
    assert record.blessed and record.pushed
    serving = pipeline_run.project_dir / configs.SERVING_MODEL_DIR / configs.MODEL_NAME
    assert [p.name for p in serving.iterdir()] == [record.pushed_version]  # no staging left
    assert (serving / record.pushed_version / "saved_model.pb").is_file()


def test_model_card_records_metrics_history_and_lineage(pipeline_run):
    with open(model_card_path(pipeline_run.record.pushed_destination)) as f:
        card = json.load(f)
    assert card["version"] == int(pipeline_run.record.pushed_version)
    assert card["lineage"]["pipeline_run_id"] == pipeline_run.record.run_id
    assert len(card["lineage"]["data_hash"]) == 64
    assert card["metrics"]["eval_examples"] == sum(map(sum, card["metrics"]["confusion_matrix"]))
    epochs = pipeline_run.params.model.finetune_epochs
    assert len(card["training_history"]["val_accuracy"]) == epochs
    # How the grade is computed, for whoever checks it.
    decision = card["decision"]
    assert decision["test_time_augmentation"] is pipeline_run.params.model.tta
    assert decision["recall_floor"] == pipeline_run.params.model.recall_floor
    assert len(decision["grade_offsets"]) == 5 and decision["temperature"] > 0
    # Which map the `gradcam` signature serves, so the web app can name it.
    assert card["heatmap"] == {"method": pipeline_run.params.model.heatmap_method,
                               "layer": pipeline_run.params.model.heatmap_layer}


def test_evaluator_metrics_match_a_confusion_matrix_computed_by_hand(pipeline_run, pushed):
    examples = _eval_examples(pipeline_run)
    outputs = pushed.signatures[features.EXAMPLES_SIGNATURE](
        examples=tf.constant(examples))
    predicted = outputs[features.GRADE_OUTPUT].numpy()
    labels = [_feature(e, features.LABEL_KEY) for e in examples]
    by_hand = metrics.confusion_matrix(labels, predicted)

    reported = evaluation.load_grade_metrics(
        pipeline_run.record.outputs["Evaluator.evaluation"])
    assert reported["confusion_matrix"] == by_hand.tolist()
    assert reported["accuracy"] == pytest.approx(np.trace(by_hand) / by_hand.sum(), abs=1e-6)
    assert reported["recall_per_grade"] == pytest.approx(metrics.recall_per_grade(by_hand),
                                                         abs=1e-6)
    assert reported["qwk"] == pytest.approx(metrics.quadratic_weighted_kappa(by_hand), abs=1e-6)
    assert reported["mae"] == pytest.approx(metrics.mean_absolute_error(by_hand), abs=1e-6)
    assert evaluation.check_consistency(reported) == []


def test_transform_output_equals_the_serving_graph_for_the_same_bytes(pipeline_run):
    """Beam's materialised Transform output vs the graph exported for serving."""
    size = pipeline_run.params.model.image_size
    transformed_files = glob.glob(os.path.join(
        pipeline_run.record.outputs["Transform.transformed_examples"], "Split-eval", "*"))
    first = next(iter(tf.data.TFRecordDataset(transformed_files, compression_type="GZIP")))
    spec = {features.TRANSFORMED_IMAGE_KEY: tf.io.FixedLenFeature([size, size, 1], tf.float32),
            features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
    materialised = tf.io.parse_single_example(first, spec)[features.TRANSFORMED_IMAGE_KEY]

    # Find the raw example with the same pixels (Transform keeps no id) by re-running the
    # exported Transform graph, as the serving signatures do, over the raw eval images.
    graph = tft.TFTransformOutput(pipeline_run.record.outputs["Transform.transform_graph"])
    images = [_feature(e, features.IMAGE_KEY) for e in _eval_examples(pipeline_run)]
    served = graph.transform_raw_features(
        {features.IMAGE_KEY: tf.constant(images)[:, None]})[features.TRANSFORMED_IMAGE_KEY]
    distances = tf.reduce_max(tf.abs(served - materialised[None]), axis=[1, 2, 3]).numpy()
    assert distances.min() < 1e-5
    # And the eager definition gives the same pixels.
    eager = preprocessing.preprocess_images(tf.constant([images[int(distances.argmin())]]), size)
    np.testing.assert_allclose(eager[0], materialised, atol=1e-5)


def _png(pixels: np.ndarray, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def test_signatures_round_trip_png_and_jpeg(pipeline_run, pushed):
    path = sorted(glob.glob(str(pipeline_run.data_dir / "3" / "*.png")))[0]
    gray = np.asarray(Image.open(path))
    rgb = np.stack([gray] * 3, axis=-1)
    images = [_png(gray), _png(rgb, "JPEG"), _png(gray.astype(np.uint16) * 257),
              _png(np.asarray(Image.fromarray(gray).resize((300, 300))))]
    out = pushed.signatures[features.SERVING_SIGNATURE](image_bytes=tf.constant(images))
    probabilities = out[features.PROBABILITIES_OUTPUT].numpy()
    assert probabilities.shape == (4, features.NUM_GRADES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out[features.GRADE_OUTPUT].numpy(),
                                  probabilities.argmax(axis=1))
    np.testing.assert_allclose(out[features.EXPECTED_GRADE_OUTPUT].numpy(),
                               probabilities @ np.arange(5), rtol=1e-5)

    cam = pushed.signatures[features.GRADCAM_SIGNATURE](image_bytes=tf.constant(images[:2]))
    size = pipeline_run.params.model.image_size
    heatmap = cam[features.HEATMAP_OUTPUT].numpy()
    assert heatmap.shape == (2, size, size)
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(cam[features.PROBABILITIES_OUTPUT].numpy(), probabilities[:2],
                               atol=1e-5)

    # The tf.Example signature (TFMA's) agrees with the image-bytes one.
    example = tf.train.Example(features=tf.train.Features(feature={
        features.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[images[0]]))}))
    via_examples = pushed.signatures[features.EXAMPLES_SIGNATURE](
        examples=tf.constant([example.SerializeToString()]))
    np.testing.assert_allclose(via_examples[features.PROBABILITIES_OUTPUT].numpy()[0],
                               probabilities[0], atol=1e-6)


def test_bad_model_is_not_pushed_and_is_compared_with_the_blessed_one(pipeline_run):
    """An untrained model against thresholds the trained one was not held to."""
    good = pipeline_run.params
    bad = dataclasses.replace(
        tiny_params(accuracy_lower_bound=0.0, recall_lower_bounds=[0.99] * 5,
                    max_accuracy_drop=0.0, ece_upper_bound=0.0),
        model=dataclasses.replace(good.model, finetune_epochs=0))
    record = local_runner.run(bad, str(pipeline_run.project_dir))
    assert not record.blessed and not record.pushed
    serving = pipeline_run.project_dir / configs.SERVING_MODEL_DIR / configs.MODEL_NAME
    assert [p.name for p in serving.iterdir()] == [pipeline_run.record.pushed_version]

    reported = evaluation.load_grade_metrics(record.outputs["Evaluator.evaluation"])
    assert not reported["blessed"]
    assert any(f.startswith("recall_grade_") for f in reported["failures"])
    # The calibration bound is an upper one and is reported as such.
    assert any(f.startswith("ece = ") and f.endswith("needs <= 0.0000")
               for f in reported["failures"]), reported["failures"]
    # The last blessed model was the baseline: TFMA computed differences against it.
    import tensorflow_model_analysis as tfma
    overall = next(m for m in tfma.load_metrics(record.outputs["Evaluator.evaluation"])
                   if not m.slice_key.single_slice_keys)
    assert any(item.key.is_diff for item in overall.metric_keys_and_values)
