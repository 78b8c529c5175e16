"""MobileNetV2 transfer-learning architecture for KL grades, and its inference path.

`build_model` makes the trainable Keras model (augmentation, backbone, head);
`features_and_logits` and `with_tta` are the inference path the post-hoc fits and the
exported signatures share (components/train.py, components/export.py); `tapped_backbone`
and `tapped_features_and_logits` are the same path with inner backbone activations beside
it, for the served heatmap.
"""

import os
from typing import List, Optional, Sequence, Tuple

import tensorflow as tf

from components import features
from components.model_config import ModelConfig

keras = tf.keras

BACKBONE = "backbone"
LOGITS = "logits"


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


class AvgMaxPooling(keras.layers.Layer):
    """Global average and global maximum of a feature map, side by side.

    float32 [N, H, W, C] -> [N, 2C] (averages first). The average describes the whole film;
    the maximum keeps the strongest local response of each channel (an osteophyte, a
    narrowed joint space), which the average over the H x W cells dilutes. Concatenated
    average and max pooling as in fast.ai's AdaptiveConcatPool2d.
    """

    def call(self, inputs):
        return tf.concat([tf.reduce_mean(inputs, axis=[1, 2]),
                          tf.reduce_max(inputs, axis=[1, 2])], axis=-1)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], 2 * input_shape[-1]])


class RandomGamma(keras.__internal__.layers.BaseRandomLayer):
    """Random gamma correction of intensities in [0, 1]; the identity unless training.

    In training each image becomes x ** gamma with its own gamma = exp(u),
    u ~ U(-max_log_gamma, max_log_gamma): gamma < 1 lifts the mid-tones, > 1 darkens them,
    while 0 (background, the rotation fill) and 1 stay put, so the output stays in [0, 1].
    Inputs are clipped to [0, 1] first (a fractional power of a negative number is
    undefined).

    Args:
      max_log_gamma: the range of log gamma (±), >= 0.
      seed: seed of the layer's random generator.

    Input and output: float32 [N, H, W, C].

    Raises:
      ValueError: a negative `max_log_gamma`.
    """

    def __init__(self, max_log_gamma: float, seed: Optional[int] = None, **kwargs):
        # force_generator: the same seeded generator Keras's own Random* layers use.
        super().__init__(seed=seed, force_generator=True, **kwargs)
        if not max_log_gamma >= 0:
            raise ValueError(f"max_log_gamma must be >= 0, got {max_log_gamma}")
        self.max_log_gamma = float(max_log_gamma)
        self.seed = seed

    def call(self, inputs, training=True):
        if not training:
            return inputs
        shape = tf.stack([tf.shape(inputs)[0], 1, 1, 1])
        log_gamma = self._random_generator.random_uniform(
            shape, -self.max_log_gamma, self.max_log_gamma, dtype=inputs.dtype)
        return tf.pow(tf.clip_by_value(inputs, 0.0, 1.0), tf.exp(log_gamma))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "max_log_gamma": self.max_log_gamma,
                "seed": self.seed}


def build_model(config: ModelConfig) -> keras.Model:
    """Preprocessed gray image [S, S, 1] in [0, 1] -> grade probabilities [5].

    Augmentation layers are part of the model and act only when `training=True`, so
    Keras applies them to training batches and never to validation; the exported
    signatures skip them altogether (`features_and_logits`).
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
    ]
    if config.augment_gamma:
        # Before the contrast layer, whose output may leave [0, 1].
        layers.append(RandomGamma(config.augment_gamma, seed=config.seed + 5, name="gamma"))
    if config.augment_contrast:  # Keras refuses a zero contrast range
        layers.append(keras.layers.RandomContrast(config.augment_contrast,
                                                  seed=config.seed + 3))
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
    backbone._name = BACKBONE  # pylint: disable=protected-access
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = config.bn_momentum
    x = backbone(x)
    x = (AvgMaxPooling(name="pool") if config.pooling == "avg_max"
         else keras.layers.GlobalAveragePooling2D(name="pool"))(x)
    x = keras.layers.Dropout(config.dropout, seed=config.seed, name="dropout")(x)
    if config.head == "ordinal":
        logits = OrdinalLogits(features.NUM_GRADES, name=LOGITS)(x)
    else:
        logits = keras.layers.Dense(features.NUM_GRADES, name=LOGITS)(x)
    outputs = keras.layers.Softmax(name=features.PROBABILITIES_OUTPUT)(logits)
    return keras.Model(inputs, outputs, name="koa_mobilenetv2")


def _to_backbone_input(images: tf.Tensor) -> tf.Tensor:
    # Gray -> 3 channels, [0, 1] -> [-1, 1]: what MobileNetV2's ImageNet weights expect.
    rgb = keras.layers.Concatenate(name="to_rgb")([images, images, images])
    return keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")(rgb)


def features_and_logits(model: keras.Model, images: tf.Tensor, feature_map=None):
    """Inference path from preprocessed images: (feature map, pooled features, logits).

    Augmentation and dropout are the identity at inference, so they are skipped. Pass
    `feature_map` to continue from an already computed one (Grad-CAM watches it).
    """
    if feature_map is None:
        rgb = model.get_layer("rescale")(model.get_layer("to_rgb")([images, images, images]))
        feature_map = model.get_layer(BACKBONE)(rgb, training=False)
    pooled = model.get_layer("pool")(feature_map)
    return feature_map, pooled, model.get_layer(LOGITS)(pooled)


def tapped_backbone(model: keras.Model, layer_names: Sequence[str]) -> keras.Model:
    """The model's backbone with the outputs of the named inner layers beside its own.

    Shares the backbone's layers and variables (nothing is copied). Called on the backbone's
    RGB input it returns `[activation of each named layer..., last feature map]`.

    Raises:
      ValueError: a name that is not a layer of the backbone.
    """
    backbone = model.get_layer(BACKBONE)
    names = {layer.name for layer in backbone.layers}
    unknown = [name for name in layer_names if name not in names]
    if unknown:
        raise ValueError(f"not layers of the {backbone.name} ({backbone.__class__.__name__}):"
                         f" {unknown}")
    taps = [backbone.get_layer(name).output for name in layer_names]
    return keras.Model(backbone.inputs, taps + [backbone.output], name="tapped_backbone")


def tapped_features_and_logits(model: keras.Model, tapped: keras.Model,
                               images: tf.Tensor) -> Tuple[List[tf.Tensor], tf.Tensor,
                                                           tf.Tensor]:
    """`features_and_logits` through a `tapped_backbone`: (inner activations, pooled, logits).

    Args:
      model: the model `tapped` was made from.
      tapped: `tapped_backbone(model, layer_names)`.
      images: float32 [N, S, S, 1] in [0, 1], the Transform graph's model input.

    Returns:
      (list of float32 [N, h, w, C], one per tapped layer; pooled features float32 [N, D];
      logits float32 [N, 5], those of `features_and_logits`). The activations are the
      tensors the rest of the network was computed from, so a GradientTape around this
      call differentiates the logits with respect to them.
    """
    rgb = model.get_layer("rescale")(model.get_layer("to_rgb")([images, images, images]))
    *taps, feature_map = tapped(rgb, training=False)
    pooled = model.get_layer("pool")(feature_map)
    return taps, pooled, model.get_layer(LOGITS)(pooled)


def with_tta(model: keras.Model, images: tf.Tensor, logits: tf.Tensor, tta: bool):
    """The logits every output is computed from: averaged with the mirror's under TTA."""
    if not tta:
        return logits
    mirrored = features_and_logits(model, tf.image.flip_left_right(images))[2]
    return (logits + mirrored) / 2.0
