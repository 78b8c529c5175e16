"""MobileNetV2 transfer-learning model for KL grades: build, train (TFX Trainer), export.

The Trainer calls `run_fn`. Hyper-parameters arrive in `fn_args.custom_config` (see
pipeline/configs.py and params.yaml); `ModelConfig` documents them.
"""

import dataclasses
import json
import logging
import os
import platform
import time
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from components import calibration, features, grade_offsets, ood

keras = tf.keras
logger = logging.getLogger(__name__)

_BACKBONE = "backbone"
_LOGITS = "logits"
_HISTORY_FILE = "training_history.json"
HEADS = ("softmax", "ordinal")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Model and training hyper-parameters.

    Attributes:
      image_size: input height/width in pixels (a multiple of 8; 96..224 for ImageNet weights).
      alpha: MobileNetV2 width multiplier.
      weights: "imagenet" (Keras download), a path to a no-top .h5 file, or "none".
      batch_size: training batch size.
      head_epochs: epochs training only the new head on the frozen backbone.
      finetune_epochs: epochs fine-tuning the backbone from `finetune_from` on.
      head_lr: learning rate of the head phase.
      finetune_lr: peak learning rate of the fine-tune phase (cosine decay to 0).
      finetune_from: index of the first backbone layer to unfreeze (0 = all).
      dropout: dropout before the classifier.
      bn_momentum: batch-norm momentum for fine-tuning (0.9 suits small data).
      class_weighting: "balanced", "sqrt" (square root of balanced) or "none".
      seed: random seed for initialisation, shuffling and augmentation.
      head: "softmax" (5 free logits) or "ordinal" (cumulative-link: one severity score
        and 4 ordered cut-points, turned into 5 probabilities in the graph).
      calibrate: fit a softmax temperature on the validation split after training and
        export it (the served probabilities are the calibrated ones).
      ood_percentile: validation-distance percentile used as the out-of-distribution
        threshold (components/ood.py).
      ordinal_smoothing: share of each training target moved to the neighbouring grades
        (split between them): a near miss then costs less than a far one. 0 = plain
        cross-entropy.
      tta: test-time augmentation: every signature averages the logits of the image and
        of its horizontal mirror (a right knee looks like a mirrored left one).
      recall_floor: when > 0, per-grade logit offsets are fitted on the validation split
        so that every grade's recall reaches this floor where it can, at the least cost in
        accuracy (components/grade_offsets.py), and exported.
      tuner_trials: hyper-parameter combinations the Tuner tries (pipeline with tuner).
      tuner_epochs: fine-tune epochs of each Tuner trial.
      equalisation: the Transform graph's contrast enhancement, a key of
        `features.EQUALISATIONS` ("ahe", "clahe" or "none").
      label_smoothing: share of each target spread evenly over all grades (Szegedy et
        al. 2016); applied after `ordinal_smoothing`.
      weight_decay: decoupled weight decay of the fine-tune phase (AdamW, Loshchilov &
        Hutter 2019); 0 = plain Adam.
      ema: fine-tune with an exponential moving average of the weights (momentum 0.99)
        and keep the averaged weights at the end (Polyak averaging).
      warmup_epochs: fine-tune epochs of linear learning-rate warm-up before the cosine
        decay.
      augment_rotation: random rotation range, a fraction of a full turn (0.03 = ±11°).
      augment_zoom: random zoom range, a fraction of the image size (±).
      augment_translate: random shift range, a fraction of the image size (±).
      augment_contrast: random contrast factor range (±).
    """

    image_size: int = 224
    alpha: float = 0.35
    weights: str = "imagenet"
    batch_size: int = 32
    head_epochs: int = 2
    finetune_epochs: int = 8
    head_lr: float = 1e-3
    finetune_lr: float = 5e-4
    finetune_from: int = 0
    dropout: float = 0.2
    bn_momentum: float = 0.9
    class_weighting: str = "sqrt"
    seed: int = 42
    head: str = "softmax"
    calibrate: bool = True
    ood_percentile: float = 99.0
    ordinal_smoothing: float = 0.0
    tta: bool = False
    recall_floor: float = 0.0
    tuner_trials: int = 4
    tuner_epochs: int = 2
    equalisation: str = "ahe"
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    ema: bool = False
    warmup_epochs: int = 0
    augment_rotation: float = 0.03
    augment_zoom: float = 0.1
    augment_translate: float = 0.0
    augment_contrast: float = 0.15

    @classmethod
    def from_dict(cls, values: Dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model settings: {sorted(unknown)}")
        config = cls(**values)
        if config.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8, got {config.image_size}")
        if config.class_weighting not in ("balanced", "sqrt", "none"):
            raise ValueError(f"class_weighting must be balanced, sqrt or none, "
                             f"got {config.class_weighting!r}")
        if config.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {config.head!r}")
        if not 0.0 < config.ood_percentile <= 100.0:
            raise ValueError(f"ood_percentile must be in (0, 100], got {config.ood_percentile}")
        if not 0.0 <= config.ordinal_smoothing < 1.0:
            raise ValueError(f"ordinal_smoothing must be in [0, 1), got "
                             f"{config.ordinal_smoothing}")
        if not 0.0 <= config.recall_floor <= 1.0:
            raise ValueError(f"recall_floor must be in [0, 1], got {config.recall_floor}")
        if config.equalisation not in features.EQUALISATIONS:
            raise ValueError(f"equalisation must be one of {features.EQUALISATIONS}, "
                             f"got {config.equalisation!r}")
        if not 0.0 <= config.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
        if config.weight_decay < 0 or config.warmup_epochs < 0:
            raise ValueError("weight_decay and warmup_epochs must not be negative")
        if config.warmup_epochs >= max(config.finetune_epochs, 1) and config.warmup_epochs:
            raise ValueError("warmup_epochs must be fewer than finetune_epochs")
        if min(config.augment_rotation, config.augment_zoom, config.augment_translate,
               config.augment_contrast) < 0:
            raise ValueError("augmentation ranges must not be negative")
        if config.tuner_trials < 1 or config.tuner_epochs < 1:
            raise ValueError("tuner_trials and tuner_epochs must be at least 1")
        return config

    def with_overrides(self, values: Dict) -> "ModelConfig":
        """A checked copy with some settings replaced (e.g. the Tuner's best values)."""
        return ModelConfig.from_dict({**dataclasses.asdict(self), **values})


def _backbone_weights(weights: str) -> Optional[str]:
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"backbone weights file not found: {weights} "
                                "(use 'imagenet' to download, or 'none')")
    return weights


class OrdinalLogits(keras.layers.Layer):
    """Cumulative-link (proportional-odds) head: features -> log p(grade), [N, K].

    One linear severity score s(x) and K-1 cut-points c_1 < ... < c_{K-1};
    P(grade > k) = sigmoid(s(x) - c_{k+1}). The cut-points are the first one plus
    cumulative softplus gaps, so they stay ordered and every grade's probability
    P(> k-1) - P(> k) is non-negative. The output is log-probabilities, so a softmax over
    it returns the same 5 probabilities, and temperature scaling and Grad-CAM treat both
    heads alike.
    """

    def __init__(self, num_grades: int = features.NUM_GRADES, **kwargs):
        super().__init__(**kwargs)
        self.num_grades = num_grades

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), 1),
                                      initializer="glorot_uniform")
        # Cut-points start evenly spread around 0 (-1.5, -0.5, 0.5, 1.5 for 5 grades).
        self.first_cut = self.add_weight(
            name="first_cut", shape=(),
            initializer=keras.initializers.Constant(-(self.num_grades - 2) / 2.0))
        self.gaps = self.add_weight(  # softplus(0.5413) == 1.0
            name="gaps", shape=(self.num_grades - 2,),
            initializer=keras.initializers.Constant(0.5413))
        super().build(input_shape)

    def cut_points(self) -> tf.Tensor:
        """The K-1 increasing cut-points."""
        return self.first_cut + tf.concat([[0.0], tf.cumsum(tf.nn.softplus(self.gaps))], 0)

    def call(self, inputs):
        score = tf.matmul(inputs, self.kernel)  # [N, 1]
        above = tf.sigmoid(score - self.cut_points()[None, :])  # [N, K-1], decreasing
        batch = tf.shape(inputs)[:1]
        cumulative = tf.concat([tf.ones(tf.concat([batch, [1]], 0)), above,
                                tf.zeros(tf.concat([batch, [1]], 0))], axis=1)
        probabilities = cumulative[:, :-1] - cumulative[:, 1:]
        return tf.math.log(tf.maximum(probabilities, 1e-7))

    def get_config(self):
        return {**super().get_config(), "num_grades": self.num_grades}


def build_model(config: ModelConfig) -> keras.Model:
    """Preprocessed gray image [S, S, 1] in [0, 1] -> grade probabilities [5].

    Augmentation layers are part of the model and act only when `training=True`, so
    Keras applies them to training batches and never to validation or serving.
    """
    size = config.image_size
    inputs = keras.Input((size, size, 1), name=features.TRANSFORMED_IMAGE_KEY)
    layers = [
        # Right knees are mirror images of left ones, so a flip is a plausible knee.
        keras.layers.RandomFlip("horizontal", seed=config.seed),
        keras.layers.RandomRotation(config.augment_rotation, fill_mode="constant",
                                    seed=config.seed + 1),
        keras.layers.RandomZoom((-config.augment_zoom, config.augment_zoom),
                                fill_mode="constant", seed=config.seed + 2),
        keras.layers.RandomContrast(config.augment_contrast, seed=config.seed + 3),
    ]
    if config.augment_translate:
        layers.append(keras.layers.RandomTranslation(
            config.augment_translate, config.augment_translate, fill_mode="constant",
            seed=config.seed + 4))
    augment = keras.Sequential(layers, name="augment")
    x = augment(inputs)
    x = _to_backbone_input(x)
    backbone = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=config.alpha, include_top=False,
        weights=_backbone_weights(config.weights))
    backbone._name = _BACKBONE  # pylint: disable=protected-access
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = config.bn_momentum
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(config.dropout, seed=config.seed, name="dropout")(x)
    if config.head == "ordinal":
        logits = OrdinalLogits(features.NUM_GRADES, name=_LOGITS)(x)
    else:
        logits = keras.layers.Dense(features.NUM_GRADES, name=_LOGITS)(x)
    outputs = keras.layers.Softmax(name=features.PROBABILITIES_OUTPUT)(logits)
    return keras.Model(inputs, outputs, name="koa_mobilenetv2")


def _to_backbone_input(images: tf.Tensor) -> tf.Tensor:
    # Gray -> 3 channels, [0, 1] -> [-1, 1]: what MobileNetV2's ImageNet weights expect.
    rgb = keras.layers.Concatenate(name="to_rgb")([images, images, images])
    return keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")(rgb)


def ordinal_smoothing_loss(smoothing: float, uniform: float = 0.0):
    """Cross-entropy against targets that give `smoothing` of the mass to the grades next to
    the label (all of it to the one neighbour of grade 0 or 4), then spread `uniform` of
    the result evenly over all grades (label smoothing). Labels are sparse, [N] or
    [N, 1]."""
    def loss(labels, probabilities):
        grade = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        # one_hot of -1 or NUM_GRADES is all zeros: the edge grades have one neighbour.
        neighbours = (tf.one_hot(grade - 1, features.NUM_GRADES)
                      + tf.one_hot(grade + 1, features.NUM_GRADES))
        neighbours /= tf.reduce_sum(neighbours, axis=-1, keepdims=True)
        target = (1.0 - smoothing) * tf.one_hot(grade, features.NUM_GRADES) + smoothing * neighbours
        target = (1.0 - uniform) * target + uniform / features.NUM_GRADES
        return keras.losses.categorical_crossentropy(target, probabilities)

    loss.__name__ = "ordinal_smoothing_crossentropy"
    return loss


def class_weights(counts: List[int], mode: str) -> Optional[Dict[int, float]]:
    """Per-grade loss weights from training counts; the mean weight per example is 1."""
    if mode == "none":
        return None
    missing = [g for g, c in enumerate(counts) if c == 0]
    if missing:
        raise ValueError(f"no training examples of grade(s) {missing}")
    total = sum(counts)
    raw = [total / (len(counts) * c) for c in counts]
    if mode == "sqrt":
        raw = [w ** 0.5 for w in raw]
    scale = total / sum(w * c for w, c in zip(raw, counts))
    return {g: w * scale for g, w in enumerate(raw)}


def _dataset(fn_args, tf_transform_output, batch_size: int, shuffle: bool,
             seed: int) -> tf.data.Dataset:
    return fn_args.data_accessor.tf_dataset_factory(
        fn_args.train_files if shuffle else fn_args.eval_files,
        tfxio.TensorFlowDatasetOptions(
            batch_size=batch_size, label_key=features.LABEL_KEY, num_epochs=1,
            shuffle=shuffle, shuffle_seed=seed, shuffle_buffer_size=1024),
        tf_transform_output.transformed_metadata.schema,
    ).prefetch(tf.data.AUTOTUNE)


def datasets(fn_args, tf_transform_output, config: ModelConfig):
    """Training (shuffled) and validation datasets of the Transform output, and the
    training examples per grade."""
    train_ds = _dataset(fn_args, tf_transform_output, config.batch_size, True, config.seed)
    eval_ds = _dataset(fn_args, tf_transform_output, config.batch_size, False, config.seed)
    counts = _label_counts(train_ds)
    logger.info("training examples per grade: %s", counts)
    return train_ds, eval_ds, counts


def _label_counts(dataset: tf.data.Dataset) -> List[int]:
    counts = [0] * features.NUM_GRADES
    for _, labels in dataset:
        for grade, n in zip(*tf.unique_with_counts(tf.reshape(labels, [-1]))[::2]):
            g = int(grade)
            if not 0 <= g < features.NUM_GRADES:
                raise ValueError(f"label {g} outside 0..{features.NUM_GRADES - 1}")
            counts[g] += int(n)
    return counts


class _ThroughputLogger(keras.callbacks.Callback):
    """Logs each epoch's wall time and training images/s."""

    def __init__(self, examples_per_epoch: int, phase: str):
        super().__init__()
        self._examples = examples_per_epoch
        self._phase = phase
        self.epoch_seconds: List[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        self.epoch_seconds.append(seconds)
        shown = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
        logger.info("%s epoch %d: %.1fs, %.1f images/s, %s", self._phase, epoch + 1,
                    seconds, self._examples / seconds, shown)


def train(config: ModelConfig, train_ds: tf.data.Dataset, eval_ds: tf.data.Dataset,
          weights: Optional[Dict[int, float]], examples_per_epoch: int):
    """Frozen-backbone head training, then fine-tuning. Returns (model, history, stats)."""
    keras.utils.set_random_seed(config.seed)
    model = build_model(config)
    backbone = model.get_layer(_BACKBONE)
    history: Dict[str, List[float]] = {}
    stats = {"train_seconds": 0.0, "train_images": 0}
    loss = (ordinal_smoothing_loss(config.ordinal_smoothing, config.label_smoothing)
            if config.ordinal_smoothing or config.label_smoothing
            else "sparse_categorical_crossentropy")

    def run_phase(phase, epochs, learning_rate, fine_tune=False):
        if epochs <= 0:
            return
        averaging = dict(use_ema=True, ema_momentum=0.99) if fine_tune and config.ema else {}
        if fine_tune and config.weight_decay:
            optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay,
                                               **averaging)
        else:
            optimizer = keras.optimizers.Adam(learning_rate, **averaging)
        model.compile(optimizer=optimizer, loss=loss,
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        timer = _ThroughputLogger(examples_per_epoch, phase)
        logger.info("%s: %d epochs, %d trainable weights", phase, epochs,
                    len(model.trainable_weights))
        result = model.fit(train_ds, validation_data=eval_ds, epochs=epochs,
                           class_weight=weights, callbacks=[timer], verbose=0)
        for key, values in result.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        stats["train_seconds"] += sum(timer.epoch_seconds)
        stats["train_images"] += examples_per_epoch * epochs

    backbone.trainable = False
    run_phase("head", config.head_epochs, config.head_lr)
    backbone.trainable = True
    for layer in backbone.layers[:config.finetune_from]:
        layer.trainable = False
    steps_per_epoch = max(1, -(-examples_per_epoch // config.batch_size))
    warmup = steps_per_epoch * config.warmup_epochs
    decay = steps_per_epoch * max(1, config.finetune_epochs - config.warmup_epochs)
    schedule = (keras.optimizers.schedules.CosineDecay(
        0.0, decay, warmup_target=config.finetune_lr, warmup_steps=warmup) if warmup
        else keras.optimizers.schedules.CosineDecay(config.finetune_lr, decay))
    run_phase("fine-tune", config.finetune_epochs, schedule, fine_tune=True)
    return model, history, stats


def _features_and_logits(model: keras.Model, images: tf.Tensor, feature_map=None):
    """Inference path from preprocessed images: (feature map, pooled features, logits).

    Augmentation and dropout are the identity at inference, so they are skipped. Pass
    `feature_map` to continue from an already computed one (Grad-CAM watches it).
    """
    if feature_map is None:
        rgb = model.get_layer("rescale")(model.get_layer("to_rgb")([images, images, images]))
        feature_map = model.get_layer(_BACKBONE)(rgb, training=False)
    pooled = model.get_layer("pool")(feature_map)
    return feature_map, pooled, model.get_layer(_LOGITS)(pooled)


def _with_tta(model: keras.Model, images: tf.Tensor, logits: tf.Tensor, tta: bool):
    """The logits every output is computed from: averaged with the mirror's under TTA."""
    if not tta:
        return logits
    mirrored = _features_and_logits(model, tf.image.flip_left_right(images))[2]
    return (logits + mirrored) / 2.0


def _collect(model: keras.Model, dataset: tf.data.Dataset, tta: bool = False):
    """Pooled features, logits as served (TTA-averaged when `tta`), labels and the plain
    logits of a whole dataset, as numpy arrays."""
    def forward_fn(images):
        _, pooled, logits = _features_and_logits(model, images)
        return pooled, logits, _with_tta(model, images, logits, tta)

    forward = tf.function(forward_fn)
    pooled, plain, served, labels = [], [], [], []
    for batch, batch_labels in dataset:
        p, l, s = forward(batch[features.TRANSFORMED_IMAGE_KEY])
        pooled.append(p.numpy())
        plain.append(l.numpy())
        served.append(s.numpy())
        labels.append(tf.reshape(batch_labels, [-1]).numpy())
    return (np.concatenate(pooled), np.concatenate(served), np.concatenate(labels),
            np.concatenate(plain))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def fit_post_hoc(model: keras.Model, config: ModelConfig, train_ds: tf.data.Dataset,
                 eval_ds: tf.data.Dataset) -> Dict:
    """Fits the grade offsets, temperature scaling and the out-of-distribution score.

    All three are attached to `model` (`grade_offsets`, `temperature_scaling`,
    `feature_distance`) so that `export` puts them into the SavedModel's signatures. The
    logits they are fitted on are the served ones (TTA-averaged when `config.tta`).

    Returns:
      Figures for the training record: validation accuracy with and without TTA and
      offsets, the offsets and their cross-fitted estimate, temperature, validation NLL/ECE
      before and after calibration, OOD threshold and the share of images flagged.
    """
    start = time.perf_counter()
    train_pooled, _, train_labels, _ = _collect(model, train_ds)
    eval_pooled, eval_logits, eval_labels, eval_plain = _collect(model, eval_ds, config.tta)
    stats = {
        "val_accuracy_plain": float(np.mean(eval_plain.argmax(1) == eval_labels)),
        "val_accuracy_tta": (float(np.mean(eval_logits.argmax(1) == eval_labels))
                             if config.tta else None),
    }
    offsets = np.zeros(features.NUM_GRADES)
    if config.recall_floor > 0:
        offsets = grade_offsets.fit(eval_logits, eval_labels, config.recall_floor)
        estimate = grade_offsets.cross_fitted(eval_logits, eval_labels, config.recall_floor,
                                              seed=config.seed)
        adjusted = (eval_logits + offsets).argmax(1)
        stats.update({
            "val_accuracy_offsets": float(np.mean(adjusted == eval_labels)),
            "val_recall_offsets": grade_offsets.recalls(
                adjusted, eval_labels, features.NUM_GRADES).tolist(),
            "val_accuracy_offsets_cross_fitted": estimate["accuracy"],
            "val_min_recall_offsets_cross_fitted": estimate["min_recall"],
        })
    model.grade_offsets = grade_offsets.GradeOffsets(offsets)
    eval_logits = eval_logits + offsets
    temperature = (calibration.fit_temperature(eval_logits, eval_labels)
                   if config.calibrate else 1.0)
    model.temperature_scaling = calibration.TemperatureScaling(temperature)
    distance = ood.fit(train_pooled, train_labels, eval_pooled, config.ood_percentile)
    model.feature_distance = distance
    stats.update({
        "grade_offsets": offsets.tolist(),
        "temperature": temperature,
        "val_nll_uncalibrated": calibration.negative_log_likelihood(eval_logits, eval_labels),
        "val_nll": calibration.negative_log_likelihood(eval_logits, eval_labels, temperature),
        "val_ece_uncalibrated": calibration.expected_calibration_error(
            _softmax(eval_logits), eval_labels),
        "val_ece": calibration.expected_calibration_error(
            _softmax(eval_logits / temperature), eval_labels),
        "ood_threshold": float(distance.threshold.numpy()),
        "ood_feature_flagged_val": float(np.mean(distance(eval_pooled).numpy() > 1.0)),
        "ood_feature_flagged_train": float(np.mean(distance(train_pooled).numpy() > 1.0)),
        "post_hoc_seconds": time.perf_counter() - start,
    })
    logger.info("post-hoc fit: %s", stats)
    return stats


def _serving_signatures(model: keras.Model, tf_transform_output, tta: bool) -> Dict:
    """The exported signatures; all run the Transform graph, then the trained model.

    Needs `fit_post_hoc` to have run: every signature returns calibrated probabilities
    (of the grade-offset logits, averaged with the mirror's under `tta`) and the
    out-of-distribution score and flag.
    """
    # Tracked by the model, so the Transform graph is saved inside the SavedModel.
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    image_spec = {features.IMAGE_KEY: raw_spec[features.IMAGE_KEY]}

    def preprocess(image_bytes):
        raw = {features.IMAGE_KEY: tf.reshape(image_bytes, [-1, 1])}
        return model.tft_layer(raw)[features.TRANSFORMED_IMAGE_KEY]

    def outputs(pooled, logits, image_bytes):
        probabilities = tf.nn.softmax(model.temperature_scaling(model.grade_offsets(logits)))
        grades = tf.range(features.NUM_GRADES, dtype=tf.float32)
        ood_score = tf.maximum(model.feature_distance(pooled),
                               ood.input_check_score(image_bytes))
        return {
            features.PROBABILITIES_OUTPUT: probabilities,
            features.GRADE_OUTPUT: tf.argmax(probabilities, axis=-1),
            features.EXPECTED_GRADE_OUTPUT: tf.reduce_sum(probabilities * grades, axis=-1),
            features.OOD_SCORE_OUTPUT: ood_score,
            features.OOD_FLAG_OUTPUT: ood_score > 1.0,
        }

    image_input = tf.TensorSpec([None], tf.string, name=features.SERVING_INPUT)

    def predict(images, image_bytes):
        _, pooled, logits = _features_and_logits(model, images)
        return outputs(pooled, _with_tta(model, images, logits, tta), image_bytes)

    @tf.function(input_signature=[image_input])
    def serve_images(image_bytes):
        return predict(preprocess(image_bytes), image_bytes)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=features.EXAMPLES_INPUT)])
    def serve_examples(examples):
        parsed = tf.io.parse_example(examples, image_spec)
        images = model.tft_layer(parsed)[features.TRANSFORMED_IMAGE_KEY]
        return predict(images, parsed[features.IMAGE_KEY])

    @tf.function(input_signature=[image_input])
    def gradcam(image_bytes):
        """Grad-CAM of the returned grade's logit on the last convolutional feature map
        (of the image as given, also under TTA)."""
        images = preprocess(image_bytes)
        feature_map, _, _ = _features_and_logits(model, images)
        with tf.GradientTape() as tape:
            tape.watch(feature_map)
            _, pooled, logits = _features_and_logits(model, images, feature_map)
            result = outputs(pooled, _with_tta(model, images, logits, tta), image_bytes)
            grade = result[features.GRADE_OUTPUT]
            score = tf.gather(logits, grade, axis=1, batch_dims=1)
        grads = tape.gradient(score, feature_map)
        channel_weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(channel_weights * feature_map, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, tf.shape(images)[1:3], method="bilinear")[..., 0]
        cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=[1, 2], keepdims=True))
        result[features.HEATMAP_OUTPUT] = cam
        return result

    return {
        features.SERVING_SIGNATURE: serve_images,
        features.EXAMPLES_SIGNATURE: serve_examples,
        features.GRADCAM_SIGNATURE: gradcam,
    }


def export(model: keras.Model, tf_transform_output, export_dir: str,
           history: Dict[str, List[float]], stats: Dict, tta: bool = False) -> None:
    """Writes the SavedModel with its three signatures and the training record."""
    signatures = _serving_signatures(model, tf_transform_output, tta)
    # save_traces=False: the signatures are all a server needs; tracing every layer's
    # call for Keras re-loading would double the export time.
    model.save(export_dir, save_format="tf", signatures=signatures, save_traces=False)
    # assets.extra/ travels with the SavedModel and is ignored by TF Serving.
    extra = os.path.join(export_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, _HISTORY_FILE), "w") as f:
        json.dump({"history": history, "stats": stats}, f, indent=2)


def read_training_record(export_dir: str) -> Dict:
    """The training history and throughput stored beside a SavedModel by `export`."""
    path = os.path.join(export_dir, "assets.extra", _HISTORY_FILE)
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _hardware() -> str:
    """What trained the model, for the experiment record."""
    gpus = tf.config.list_physical_devices("GPU")
    return (f"{len(os.sched_getaffinity(0))} CPU cores ({platform.machine()}), "
            + (f"{len(gpus)} GPU" if gpus else "no GPU"))


def run_fn(fn_args) -> None:
    """TFX Trainer entry point.

    Settings come from `fn_args.custom_config`; when the pipeline has a Tuner, its best
    hyper-parameters (`fn_args.hyperparameters`) override them.
    """
    config = ModelConfig.from_dict(dict(fn_args.custom_config or {}))
    tuned = getattr(fn_args, "hyperparameters", None)
    if tuned:
        from components import tuning  # keras-tuner only where a Tuner ran
        config = config.with_overrides(tuning.hyperparameter_values(tuned))
    logger.info("training with %s", config)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train_ds, eval_ds, counts = datasets(fn_args, tf_transform_output, config)
    weights = class_weights(counts, config.class_weighting)
    if weights:
        logger.info("class weights: %s", {g: round(w, 3) for g, w in weights.items()})
    model, history, stats = train(config, train_ds, eval_ds, weights, sum(counts))
    stats["train_images_per_second"] = (
        stats["train_images"] / stats["train_seconds"] if stats["train_seconds"] else 0.0)
    stats.update(fit_post_hoc(model, config, train_ds, eval_ds))
    stats["config"] = dataclasses.asdict(config)
    stats["hardware"] = _hardware()
    export(model, tf_transform_output, fn_args.serving_model_dir, history, stats,
           tta=config.tta)
    logger.info("exported SavedModel to %s", fn_args.serving_model_dir)
