"""The Trainer's selection split (`model.select_fraction`), best-epoch restore and
class-balanced sampling (`model.class_balance`)."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from components import features, train
from components.model_config import ModelConfig


def test_selection_split_is_a_stable_share_of_patients():
    ids = tf.constant([f"{9000000 + i}" for i in range(4000)])
    chosen = train.in_selection_split(ids, 0.1).numpy()
    assert 0.085 < chosen.mean() < 0.115
    # The same patients on every call; both knees of a patient share one id.
    np.testing.assert_array_equal(chosen, train.in_selection_split(ids, 0.1).numpy())
    # A larger share keeps the smaller one's patients (nested buckets).
    assert np.all(train.in_selection_split(ids, 0.2).numpy()[chosen])
    assert not train.in_selection_split(ids, 0.0).numpy().any()


def _train_patients(transformed_examples_uri):
    """Patient id of every transformed training example, in file order."""
    files = sorted(glob.glob(os.path.join(transformed_examples_uri, "Split-train", "*")))
    spec = {features.PATIENT_KEY: tf.io.FixedLenFeature([], tf.string)}
    records = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [tf.io.parse_single_example(r, spec)[features.PATIENT_KEY].numpy()
            for r in records]


def test_selection_split_holds_out_whole_patients_from_fitting(pipeline_run):
    import tensorflow_transform as tft

    outputs = pipeline_run.record.outputs
    uri = outputs["Transform.transformed_examples"]
    tft_output = tft.TFTransformOutput(outputs["Transform.transform_graph"])
    config = ModelConfig(image_size=64, batch_size=16, select_fraction=0.3)
    train_ds, eval_ds, select_ds, counts = train.datasets(train.fn_args_for(uri), tft_output,
                                                          config)

    patients = _train_patients(uri)
    held = train.in_selection_split(tf.constant(patients), 0.3).numpy()
    assert 0 < held.sum() < len(patients)
    select_labels = np.concatenate([y.numpy() for _, y in select_ds])
    fit_labels = np.concatenate([y.numpy() for _, y in train_ds])
    assert len(select_labels) == held.sum() and sum(counts) == len(fit_labels)
    assert len(select_labels) + len(fit_labels) == len(patients)
    image, _ = next(iter(select_ds))
    assert set(image) == {features.TRANSFORMED_IMAGE_KEY}

    # Without a selection split every training film fits, and there is no select_ds.
    all_ds, _, none, all_counts = train.datasets(
        train.fn_args_for(uri), tft_output, ModelConfig(image_size=64, batch_size=16))
    assert none is None and sum(all_counts) == len(patients)

    # A share too small for the patients there are is refused, by name.
    with pytest.raises(ValueError, match="set aside no training patient"):
        train.datasets(train.fn_args_for(uri), tft_output,
                       ModelConfig(image_size=64, batch_size=16, select_fraction=0.001))


def test_fn_args_for_a_directory_without_splits_names_the_missing_ones(tmp_path):
    (tmp_path / "Split-train").mkdir()
    with pytest.raises(ValueError, match="no Split-eval"):
        train.fn_args_for(str(tmp_path))


def _brightness_set(reverse: bool, seed: int):
    """Images whose brightness encodes the grade (reversed for `reverse`)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(5), 8)
    level = (4 - labels) if reverse else labels
    images = (level[:, None, None, None] / 4.0 * 0.8 + 0.1
              + rng.normal(0, 0.02, (len(labels), 32, 32, 1))).astype("float32")
    return tf.data.Dataset.from_tensor_slices(
        ({features.TRANSFORMED_IMAGE_KEY: images}, labels)).batch(8)


@pytest.mark.slow  # real (tiny) training runs
def test_best_selection_epoch_is_restored_and_patience_stops_training():
    # The selection films carry the reversed grades: the better the model fits, the worse
    # it scores there, so the selection loss rises and training should stop early.
    fit_ds, select_ds = _brightness_set(False, 0), _brightness_set(True, 1)
    config = ModelConfig(image_size=32, weights="none", head_epochs=1, finetune_epochs=8,
                         finetune_lr=3e-3, ema=True, batch_size=8, select_fraction=0.2,
                         early_stopping_patience=2, augment_rotation=0.0,
                         augment_zoom=0.0, augment_contrast=0.0)
    model, history, stats = train.train(config, fit_ds, fit_ds, None, 40, select_ds)

    selection = stats["selection"]
    scored = history["select_loss"]
    # One history entry per epoch for every key; the head epoch has no selection score.
    assert len(scored) == len(history["loss"]) == 1 + selection["epochs_run"]
    assert scored[0] is None
    finetune_scores = scored[1:]
    assert selection["epoch"] == int(np.argmin(finetune_scores)) + 1
    assert selection["epochs_run"] < config.finetune_epochs
    assert selection["epochs_run"] == selection["epoch"] + config.early_stopping_patience
    # The returned model is the restored (averaged) one: it scores what was recorded.
    loss, accuracy = model.evaluate(select_ds, verbose=0)
    assert loss == pytest.approx(selection["loss"], rel=1e-4)
    assert accuracy == pytest.approx(selection["accuracy"])


def _numbered_films(counts, size=2):
    """A batched, shuffled training set; every pixel of film i holds i, so a drawn image
    says which film it is. Returns (dataset, grade of each film)."""
    grades = np.repeat(np.arange(features.NUM_GRADES), counts)
    images = np.broadcast_to(np.arange(len(grades), dtype="float32")[:, None, None, None],
                             (len(grades), size, size, 1)).copy()
    ds = tf.data.Dataset.from_tensor_slices(
        ({features.TRANSFORMED_IMAGE_KEY: images}, grades)).shuffle(len(grades), seed=0)
    return ds.batch(7), grades


def test_sampling_probabilities_follow_count_times_class_weight():
    counts = [2286, 1046, 1516, 757, 173]
    balanced = train.sampling_probabilities(counts, train.class_weights(counts, "balanced"))
    np.testing.assert_allclose(balanced, 0.2)
    root = np.sqrt(counts)
    np.testing.assert_allclose(
        train.sampling_probabilities(counts, train.class_weights(counts, "sqrt")),
        root / root.sum())


def test_class_balanced_sampling_draws_real_films_in_proportion():
    counts = [120, 60, 30, 15, 5]
    ds, grades = _numbered_films(counts)
    sampled = train.class_sampled_dataset(ds, counts, train.class_weights(counts, "balanced"),
                                          batch_size=8, seed=3)
    drawn, orders = [], []
    for _ in range(30):
        batches = list(sampled)
        # An epoch has as many films, and steps, as one over the training set.
        assert [len(y) for _, y in batches] == [8] * 28 + [6]
        ids = np.concatenate([x[features.TRANSFORMED_IMAGE_KEY][:, 0, 0, 0] for x, _ in
                              batches]).astype(int)
        labels = np.concatenate([y for _, y in batches])
        np.testing.assert_array_equal(grades[ids], labels)  # each film keeps its grade
        drawn.append(labels)
        orders.append(ids)
    share = np.bincount(np.concatenate(drawn), minlength=5) / (30 * sum(counts))
    np.testing.assert_allclose(share, 0.2, atol=0.02)  # 6,900 draws: sd 0.005
    assert not np.array_equal(orders[0], orders[1])  # a new draw every epoch
    # All five grade-4 films come round, not one of them over and over.
    assert set(np.concatenate(orders)[np.concatenate(drawn) == 4]) == {225, 226, 227, 228, 229}


@pytest.mark.slow  # one tiny training epoch
def test_fit_inputs_weight_the_loss_or_resample():
    counts = [4, 4, 2, 2, 2]
    ds, _ = _numbered_films(counts, size=32)
    weighted = ModelConfig(image_size=32, class_weighting="sqrt")
    fit_ds, weights = train.fit_inputs(ds, counts, weighted)
    assert fit_ds is ds and weights == train.class_weights(counts, "sqrt")

    sampling = ModelConfig(image_size=32, weights="none", head_epochs=0, finetune_epochs=1,
                           batch_size=4, class_weighting="sqrt", class_balance="sampling")
    fit_ds, weights = train.fit_inputs(ds, counts, sampling)
    assert weights is None and fit_ds is not ds
    # Keras fits on it: one epoch of ceil(14 / 4) steps, unweighted.
    _, history, stats = train.train(sampling, fit_ds, ds, weights, sum(counts))
    assert np.isfinite(history["loss"]).all() and stats["train_images"] == 14
