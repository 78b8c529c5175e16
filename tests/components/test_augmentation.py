"""Training-only augmentation options: mixup (`model.mixup_alpha`) and random gamma
(`model.augment_gamma`), and that their defaults leave training as it was; a model with
another pooling (`model.pooling`) through the same train, post-hoc fit and export; the
served heatmap's method and layer (`model.heatmap_method`, `model.heatmap_layer`)."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from scipy import stats

from components import export, features, model, post_hoc, train
from components.model_config import ModelConfig

WEIGHTS = {0: 0.5, 1: 1.0, 2: 1.5, 3: 2.0, 4: 3.0}
KEY = features.TRANSFORMED_IMAGE_KEY


def _one_batch_per_grade(size=6):
    """Five images [5, size, size, 1] with distinct random pixels, grades 0..4: a mixed
    target row then says which images were blended and how much of each."""
    images = np.random.default_rng(0).random((5, size, size, 1)).astype("float32")
    return tf.constant(images), tf.range(5, dtype=tf.int64)


@pytest.mark.parametrize("label_shape", [[5], [5, 1]])
def test_mixup_blends_images_targets_and_weights_alike(label_shape):
    images, grades = _one_batch_per_grade()
    seen_blends = 0
    for seed in range(12):
        mixed, targets, weights = train.mixup_batch(
            images, tf.reshape(grades, label_shape), tf.constant([seed, 7]), 0.4, WEIGHTS)
        t = targets.numpy()
        assert t.shape == (5, 5) and (t >= 0).all()
        np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-6)
        # Grades are distinct, so row i's target is the recipe of mixed image i.
        np.testing.assert_allclose(mixed.numpy(),
                                   np.einsum("ij,jhwc->ihwc", t, images.numpy()), atol=1e-6)
        np.testing.assert_allclose(weights.numpy(), t @ [WEIGHTS[g] for g in range(5)],
                                   rtol=1e-6)
        # One lambda for the batch: every image keeps the same share of itself, unless its
        # partner is itself; the rest is one partner each, a permutation of the batch.
        # Mixing keeps the batch's mean weight (the partners are a permutation).
        assert weights.numpy().mean() == pytest.approx(np.mean(list(WEIGHTS.values())))
        own = np.diag(t)
        itself = own > 1.0 - 1e-6
        lam = own[~itself]
        if lam.size == 0 or 1.0 - lam[0] < 1e-3:
            continue
        np.testing.assert_allclose(lam, lam[0], rtol=1e-6)
        partners = (t - lam[0] * np.eye(5)) / (1.0 - lam[0])
        partners[itself] = np.eye(5)[itself]
        np.testing.assert_allclose(partners, np.round(partners), atol=1e-3)
        np.testing.assert_allclose(partners.sum(axis=0), 1.0, atol=1e-3)
        seen_blends += 1
    assert seen_blends >= 6


def test_mixup_lambda_follows_the_beta_distribution():
    for alpha in (0.2, 1.0):
        draws = np.array([float(train.mixup_lambda(tf.constant([seed, 3]), alpha))
                          for seed in range(400)])
        assert ((draws >= 0) & (draws <= 1)).all()
        assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    # Small alpha keeps most examples close to one of the pair, alpha 1 is uniform.
    small = np.array([float(train.mixup_lambda(tf.constant([seed, 3]), 0.2))
                      for seed in range(400)])
    assert np.mean(np.minimum(small, 1 - small) < 0.1) > 0.5


def test_mixup_dataset_draws_anew_each_pass_and_reproducibly():
    images, grades = _one_batch_per_grade()
    plain = tf.data.Dataset.from_tensor_slices(({KEY: images}, grades)).batch(5)

    def passes(dataset):
        return [[targets.numpy() for _, targets, *_ in dataset] for _ in range(3)]

    first = passes(train.mixup_dataset(plain, 0.4, seed=5))
    again = passes(train.mixup_dataset(plain, 0.4, seed=5))
    np.testing.assert_array_equal(np.array(first), np.array(again))
    assert not all(np.array_equal(first[0], other) for other in first[1:])
    (inputs, targets), = train.mixup_dataset(plain, 0.4, seed=5).take(1)
    assert set(inputs) == {KEY} and targets.shape == (5, 5)
    with_weights = next(iter(train.mixup_dataset(plain, 0.4, seed=5, weights=WEIGHTS)))
    assert len(with_weights) == 3 and with_weights[2].shape == (5,)


@pytest.mark.parametrize("smoothing, uniform", [(0.0, 0.0), (0.0, 0.1), (0.2, 0.1)])
def test_loss_of_a_mixed_target_is_the_mix_of_the_losses(smoothing, uniform):
    # Cross-entropy is linear in the target and both smoothings are linear maps, so a
    # mixed target costs lambda L(y_i) + (1 - lambda) L(y_j) under every smoothing.
    loss = train.ordinal_smoothing_loss(smoothing, uniform)
    probabilities = tf.nn.softmax(tf.random.stateless_normal([3, 5], seed=[1, 2]))
    first, second, lam = tf.constant([0, 2, 4]), tf.constant([3, 2, 1]), 0.3
    mixed = lam * tf.one_hot(first, 5) + (1 - lam) * tf.one_hot(second, 5)
    expected = lam * loss(first, probabilities) + (1 - lam) * loss(second, probabilities)
    np.testing.assert_allclose(loss(mixed, probabilities).numpy(), expected.numpy(),
                               rtol=1e-5)
    # The accuracy metric reads a mixed target as its larger share's grade.
    hits = train.grade_accuracy(mixed, tf.one_hot([3, 2, 1], 5)).numpy()
    np.testing.assert_array_equal(hits, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(train.grade_accuracy(first, tf.one_hot([3, 2, 1], 5)),
                                  [0.0, 1.0, 0.0])


def test_random_gamma_is_the_identity_at_inference_and_bounded_in_training():
    layer = model.RandomGamma(0.3, seed=0)
    levels = np.linspace(0.0, 1.0, 11, dtype="float32")  # includes 0 and 1
    images = np.tile(levels[None, :, None, None], (8, 1, 11, 1))
    np.testing.assert_array_equal(layer(images, training=False).numpy(), images)
    out = layer(images, training=True).numpy()
    assert out.shape == images.shape and ((out >= 0) & (out <= 1)).all()
    assert not np.allclose(out, images)
    np.testing.assert_array_equal(out[:, [0, -1]], images[:, [0, -1]])
    # One gamma per image, inside exp(±0.3), different between images.
    inner = slice(1, -1)
    gammas = np.log(out[:, inner]) / np.log(images[:, inner])
    per_image = gammas.reshape(8, -1)
    np.testing.assert_allclose(per_image, np.broadcast_to(per_image[:, :1], per_image.shape),
                               rtol=1e-3)
    assert (np.abs(np.log(per_image[:, 0])) <= 0.3 + 1e-5).all()
    assert np.unique(per_image[:, 0].round(5)).size > 1
    with pytest.raises(ValueError, match="max_log_gamma"):
        model.RandomGamma(-0.1)


def test_gamma_sits_with_the_intensity_augmentations_only_when_asked():
    def augment_layers(**values):
        net = model.build_model(ModelConfig(image_size=32, weights="none", **values))
        return [type(layer).__name__ for layer in net.get_layer("augment").layers]

    default = augment_layers()
    assert "RandomGamma" not in default
    with_gamma = augment_layers(augment_gamma=0.2)
    assert with_gamma == [*default[:-1], "RandomGamma", "RandomContrast"]


def _tiny_batch(n=8, size=32):
    images = tf.random.stateless_uniform([n, size, size, 1], seed=[4, 2])
    labels = tf.constant([0, 1, 2, 3, 4, 0, 1, 2][:n], tf.int64)
    return tf.data.Dataset.from_tensor_slices(({KEY: images}, labels)).batch(n)


@pytest.mark.slow  # three tiny trainings of one step
def test_defaults_train_exactly_as_a_plain_keras_fit():
    config = ModelConfig(image_size=32, weights="none", head_epochs=0, finetune_epochs=1,
                         batch_size=8)
    ds = _tiny_batch()
    weights = train.class_weights([2, 2, 2, 1, 1], "sqrt")
    trained, _, _ = train.train(config, ds, ds, weights, 8)

    # Today's recipe written out: sparse cross-entropy, Keras class weights, the schedule.
    tf.keras.utils.set_random_seed(config.seed)
    reference = model.build_model(config)
    reference.compile(tf.keras.optimizers.Adam(train.finetune_schedule(config, 1)),
                      "sparse_categorical_crossentropy")
    reference.fit(ds, epochs=1, class_weight=weights, verbose=0)
    for ours, theirs in zip(trained.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(ours, theirs)

    # The comparison sees a change: mixup moves the weights of the same step.
    mixed, history, _ = train.train(dataclasses.replace(config, mixup_alpha=0.4), ds, ds,
                                    weights, 8)
    assert np.isfinite(history["loss"]).all()
    assert not all(np.array_equal(a, b)
                   for a, b in zip(mixed.get_weights(), reference.get_weights()))


def _session_films(pipeline_run):
    """(image size, Transform output, 10 PNG films, their transformed dataset in batches
    of 4 with grades 0..4 in turn) from the session pipeline run: the real preprocessing,
    analysed once."""
    size = pipeline_run.params.model.image_size
    tft_output = tft.TFTransformOutput(pipeline_run.record.outputs["Transform.transform_graph"])
    pngs = [path.read_bytes() for path in sorted(pipeline_run.data_dir.rglob("*.png"))[:10]]
    transformed = tft_output.transform_features_layer()(
        {features.IMAGE_KEY: tf.reshape(tf.constant(pngs), [-1, 1])})
    labels = tf.constant([g % 5 for g in range(len(pngs))], tf.int64)
    ds = tf.data.Dataset.from_tensor_slices(({KEY: transformed[KEY]}, labels)).batch(4)
    return size, tft_output, pngs, ds


def test_mixup_and_gamma_leave_the_served_outputs_unchanged(tmp_path, pipeline_run):
    size, tft_output, pngs, ds = _session_films(pipeline_run)

    config = ModelConfig(image_size=size, weights="none", head_epochs=0, finetune_epochs=1,
                         batch_size=4, mixup_alpha=0.4, augment_gamma=0.3)
    trained, history, _ = train.train(config, ds, ds, train.class_weights([2, 2, 2, 1, 1],
                                                                          "sqrt"), len(pngs))
    assert np.isfinite(history["loss"]).all()
    # The same weights in the network built without the two options (copied before
    # post_hoc.fit attaches its own variables to the model).
    plain = model.build_model(dataclasses.replace(config, mixup_alpha=0.0, augment_gamma=0.0))
    plain.set_weights(trained.get_weights())
    post_hoc.fit(trained, config, ds, ds)
    export.export(trained, tft_output, str(tmp_path / "model"), history, {})
    post_hoc.fit(plain, config, ds, ds)
    expected = export._serving_signatures(plain, tft_output, tta=False)[
        features.SERVING_SIGNATURE](tf.constant(pngs))

    served = tf.saved_model.load(str(tmp_path / "model")).signatures[
        features.SERVING_SIGNATURE](**{features.SERVING_INPUT: tf.constant(pngs)})
    assert set(served) == set(expected)
    for name, value in expected.items():
        if value.dtype == tf.string:
            np.testing.assert_array_equal(served[name].numpy(), value.numpy())
        else:
            np.testing.assert_allclose(served[name].numpy(), value.numpy(), rtol=1e-5,
                                       atol=1e-6)


def test_avg_max_pooling_model_trains_exports_and_serves(tmp_path, pipeline_run):
    size, tft_output, pngs, ds = _session_films(pipeline_run)
    config = ModelConfig(image_size=size, weights="none", head_epochs=0, finetune_epochs=1,
                         batch_size=4, pooling="avg_max", tta=True)

    trained, history, _ = train.train(config, ds, ds, None, len(pngs))
    post_hoc.fit(trained, config, ds, ds)
    expected = export._serving_signatures(trained, tft_output, tta=True)[
        features.SERVING_SIGNATURE](tf.constant(pngs))
    export.export(trained, tft_output, str(tmp_path / "model"), history, {})

    served = tf.saved_model.load(str(tmp_path / "model")).signatures[
        features.SERVING_SIGNATURE](**{features.SERVING_INPUT: tf.constant(pngs)})
    probabilities = served[features.PROBABILITIES_OUTPUT].numpy()
    assert probabilities.shape == (len(pngs), features.NUM_GRADES)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities,
                               expected[features.PROBABILITIES_OUTPUT].numpy(), atol=1e-5)


def test_the_configured_heatmap_layer_and_method_are_the_served_ones(tmp_path, pipeline_run):
    size, tft_output, pngs, ds = _session_films(pipeline_run)
    config = ModelConfig(image_size=size, weights="none", heatmap_method="gradcam",
                         heatmap_layer="out_relu")
    net = model.build_model(config)
    post_hoc.fit(net, config, ds, ds)
    export.export(net, tft_output, str(tmp_path / "model"), {}, {},
                  heatmap_method=config.heatmap_method, heatmap_layer=config.heatmap_layer)

    def heatmap_of(method, layer):
        return export._serving_signatures(net, tft_output, False, method, layer)[
            features.GRADCAM_SIGNATURE](tf.constant(pngs))[features.HEATMAP_OUTPUT].numpy()

    served = tf.saved_model.load(str(tmp_path / "model")).signatures[
        features.GRADCAM_SIGNATURE](**{features.SERVING_INPUT: tf.constant(pngs)})
    served = served[features.HEATMAP_OUTPUT].numpy()
    np.testing.assert_allclose(served, heatmap_of("gradcam", "out_relu"), atol=1e-5)
    # The default heatmap is another map, so the comparison above can fail.
    assert not np.allclose(served, heatmap_of(export.HEATMAP_METHOD, export.HEATMAP_LAYER),
                           atol=1e-2)


def test_the_fitted_grade_offsets_are_the_served_ones(tmp_path, pipeline_run):
    size, tft_output, pngs, ds = _session_films(pipeline_run)
    config = ModelConfig(image_size=size, weights="none")
    net = model.build_model(config)
    post_hoc.fit(net, config, ds, ds)
    net.grade_offsets.offsets.assign(np.zeros(features.NUM_GRADES, np.float32))
    plain = export._serving_signatures(net, tft_output, tta=False)[
        features.SERVING_SIGNATURE](tf.constant(pngs))[features.GRADE_OUTPUT].numpy()
    # A grade the plain network does not give every film, raised far above the others.
    lifted = next(g for g in range(features.NUM_GRADES) if not (plain == g).all())
    offsets = np.zeros(features.NUM_GRADES, np.float32)
    offsets[lifted] = 50.0
    net.grade_offsets.offsets.assign(offsets)
    export.export(net, tft_output, str(tmp_path / "model"), {}, {})

    served = tf.saved_model.load(str(tmp_path / "model")).signatures[
        features.SERVING_SIGNATURE](**{features.SERVING_INPUT: tf.constant(pngs)})
    assert (served[features.GRADE_OUTPUT].numpy() == lifted).all()


def test_a_heatmap_layer_the_backbone_lacks_fails_before_training():
    config = ModelConfig(image_size=64, weights="none", heatmap_layer="block_99_add")
    with pytest.raises(ValueError, match="block_99_add"):
        train.train(config, None, None, None, 8)
