"""MobileNetV2 transfer-learning model for KL grades: build, train (TFX Trainer), export.

The Trainer calls `run_fn`. Hyper-parameters arrive in `fn_args.custom_config` (see
pipeline/configs.py and params.yaml); `ModelConfig` documents them.
"""

import dataclasses
import json
import logging
import os
import time
from typing import Dict, List, Optional

import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from components import features

keras = tf.keras
logger = logging.getLogger(__name__)

_BACKBONE = "backbone"
_LOGITS = "logits"
_HISTORY_FILE = "training_history.json"


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
        return config


def _backbone_weights(weights: str) -> Optional[str]:
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"backbone weights file not found: {weights} "
                                "(use 'imagenet' to download, or 'none')")
    return weights


def build_model(config: ModelConfig) -> keras.Model:
    """Preprocessed gray image [S, S, 1] in [0, 1] -> grade probabilities [5].

    Augmentation layers are part of the model and act only when `training=True`, so
    Keras applies them to training batches and never to validation or serving.
    """
    size = config.image_size
    inputs = keras.Input((size, size, 1), name=features.TRANSFORMED_IMAGE_KEY)
    augment = keras.Sequential([
        # Right knees are mirror images of left ones, so a flip is a plausible knee.
        keras.layers.RandomFlip("horizontal", seed=config.seed),
        keras.layers.RandomRotation(0.03, fill_mode="constant", seed=config.seed + 1),
        keras.layers.RandomZoom((-0.1, 0.1), fill_mode="constant", seed=config.seed + 2),
        keras.layers.RandomContrast(0.15, seed=config.seed + 3),
    ], name="augment")
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
    logits = keras.layers.Dense(features.NUM_GRADES, name=_LOGITS)(x)
    outputs = keras.layers.Softmax(name=features.PROBABILITIES_OUTPUT)(logits)
    return keras.Model(inputs, outputs, name="koa_mobilenetv2")


def _to_backbone_input(images: tf.Tensor) -> tf.Tensor:
    # Gray -> 3 channels, [0, 1] -> [-1, 1]: what MobileNetV2's ImageNet weights expect.
    rgb = keras.layers.Concatenate(name="to_rgb")([images, images, images])
    return keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")(rgb)


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

    def run_phase(phase, epochs, learning_rate):
        if epochs <= 0:
            return
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
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
    steps = max(1, -(-examples_per_epoch // config.batch_size)) * max(1, config.finetune_epochs)
    run_phase("fine-tune", config.finetune_epochs,
              keras.optimizers.schedules.CosineDecay(config.finetune_lr, steps))
    return model, history, stats


def _serving_signatures(model: keras.Model, tf_transform_output) -> Dict:
    """The exported signatures; all run the Transform graph, then the trained model."""
    # Tracked by the model, so the Transform graph is saved inside the SavedModel.
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    image_spec = {features.IMAGE_KEY: raw_spec[features.IMAGE_KEY]}
    backbone = model.get_layer(_BACKBONE)
    head = [model.get_layer(name) for name in ("pool", "dropout", _LOGITS)]
    to_rgb, rescale = model.get_layer("to_rgb"), model.get_layer("rescale")

    def preprocess(image_bytes):
        raw = {features.IMAGE_KEY: tf.reshape(image_bytes, [-1, 1])}
        return model.tft_layer(raw)[features.TRANSFORMED_IMAGE_KEY]

    def outputs(probabilities):
        grades = tf.range(features.NUM_GRADES, dtype=tf.float32)
        return {
            features.PROBABILITIES_OUTPUT: probabilities,
            features.GRADE_OUTPUT: tf.argmax(probabilities, axis=-1),
            features.EXPECTED_GRADE_OUTPUT: tf.reduce_sum(probabilities * grades, axis=-1),
        }

    image_input = tf.TensorSpec([None], tf.string, name=features.SERVING_INPUT)

    @tf.function(input_signature=[image_input])
    def serve_images(image_bytes):
        return outputs(model(preprocess(image_bytes), training=False))

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=features.EXAMPLES_INPUT)])
    def serve_examples(examples):
        parsed = tf.io.parse_example(examples, image_spec)
        images = model.tft_layer(parsed)[features.TRANSFORMED_IMAGE_KEY]
        return outputs(model(images, training=False))

    @tf.function(input_signature=[image_input])
    def gradcam(image_bytes):
        """Grad-CAM of the predicted grade's logit on the last convolutional feature map."""
        images = preprocess(image_bytes)
        inputs = rescale(to_rgb([images, images, images]))
        with tf.GradientTape() as tape:
            feature_map = backbone(inputs, training=False)
            tape.watch(feature_map)
            logits = feature_map
            for layer in head:
                logits = layer(logits, training=False)
            grade = tf.argmax(logits, axis=-1)
            score = tf.gather(logits, grade, axis=1, batch_dims=1)
        grads = tape.gradient(score, feature_map)
        channel_weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(channel_weights * feature_map, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, tf.shape(images)[1:3], method="bilinear")[..., 0]
        cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=[1, 2], keepdims=True))
        result = outputs(tf.nn.softmax(logits))
        result[features.HEATMAP_OUTPUT] = cam
        return result

    return {
        features.SERVING_SIGNATURE: serve_images,
        features.EXAMPLES_SIGNATURE: serve_examples,
        features.GRADCAM_SIGNATURE: gradcam,
    }


def export(model: keras.Model, tf_transform_output, export_dir: str,
           history: Dict[str, List[float]], stats: Dict) -> None:
    """Writes the SavedModel with its three signatures and the training record."""
    signatures = _serving_signatures(model, tf_transform_output)
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


def run_fn(fn_args) -> None:
    """TFX Trainer entry point."""
    config = ModelConfig.from_dict(dict(fn_args.custom_config or {}))
    logger.info("training with %s", config)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train_ds = _dataset(fn_args, tf_transform_output, config.batch_size, True, config.seed)
    eval_ds = _dataset(fn_args, tf_transform_output, config.batch_size, False, config.seed)
    counts = _label_counts(train_ds)
    logger.info("training examples per grade: %s", counts)
    weights = class_weights(counts, config.class_weighting)
    if weights:
        logger.info("class weights: %s", {g: round(w, 3) for g, w in weights.items()})
    model, history, stats = train(config, train_ds, eval_ds, weights, sum(counts))
    stats["train_images_per_second"] = (
        stats["train_images"] / stats["train_seconds"] if stats["train_seconds"] else 0.0)
    export(model, tf_transform_output, fn_args.serving_model_dir, history, stats)
    logger.info("exported SavedModel to %s", fn_args.serving_model_dir)
