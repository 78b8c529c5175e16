"""Model and training settings (the `model:` section of params.yaml), free of TensorFlow.

`pipeline/params.py` reads params.yaml with it, so reading settings never imports
TensorFlow, TFT or tfx_bsl. The defaults are params.yaml's (the synthetic demo's).
"""

import dataclasses
from typing import Dict

from components import features

HEADS = ("softmax", "ordinal")
POOLINGS = ("avg", "avg_max")
# Class activation maps the `gradcam` signature can serve (components/export.py).
HEATMAP_METHODS = tuple(features.HEATMAP_METHOD_NAMES)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Model and training hyper-parameters.

    Attributes:
      image_size: input height/width in pixels (a multiple of features.IMAGE_SIZE_MULTIPLE).
        The backbone is fully convolutional, so ImageNet weights trained at 224 px load at
        any size (Keras warns outside 96..224 only for its own download).
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
      class_balance: how `class_weighting` acts: "weights" scales each film's loss by
        its grade's weight; "sampling" draws grade g with probability ∝ count x weight
        and leaves the loss unweighted (same expected gradient; components/train.py,
        `class_sampled_dataset`).
      seed: random seed for initialisation, shuffling and augmentation.
      head: "softmax" (5 free logits) or "ordinal" (cumulative-link: one severity score
        and 4 ordered cut-points, turned into 5 probabilities in the graph).
      pooling: how the last feature map [S/32, S/32, 1280] becomes the head's features:
        "avg" (global average, 1280) or "avg_max" (global average and global maximum side
        by side, 2560).
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
      augment_gamma: random gamma correction of the [0, 1] intensities in training: each
        image becomes x ** gamma with gamma = exp(U(-augment_gamma, augment_gamma)), at most
        1.0 (gamma within e^±1). 0 = off.
      mixup_alpha: mixup (Zhang et al. 2018) in both training phases: each training batch
        is blended with a shuffled copy of itself, images and one-hot grades alike, with
        one weight lambda ~ Beta(mixup_alpha, mixup_alpha) per batch; at most 1.0 (uniform
        lambda). 0 = off. Needs batch_size >= 2.
      heatmap_method: the class activation map the `gradcam` signature serves, one of
        HEATMAP_METHODS (Grad-CAM, Grad-CAM++, LayerCAM; components/export.py).
      heatmap_layer: the backbone layer it is computed on, a MobileNetV2 layer name
        (e.g. "block_12_add", 14x14 at 224 px; "out_relu", the last block, 7x7). Which one
        sits on the joint depends on the trained model: choose it with
        benchmarks/gradcam_location.py on a model of the configuration.
    """

    image_size: int = 128
    alpha: float = 0.35
    weights: str = "none"
    batch_size: int = 32
    head_epochs: int = 0
    finetune_epochs: int = 30
    head_lr: float = 1e-3
    finetune_lr: float = 2e-3
    finetune_from: int = 0
    dropout: float = 0.2
    bn_momentum: float = 0.9
    class_weighting: str = "sqrt"
    class_balance: str = "weights"
    seed: int = 42
    head: str = "softmax"
    pooling: str = "avg"
    calibrate: bool = True
    ood_percentile: float = 99.0
    ordinal_smoothing: float = 0.0
    tta: bool = False
    recall_floor: float = 0.0
    tuner_trials: int = 4
    tuner_epochs: int = 2
    equalisation: str = features.DEFAULT_EQUALISATION
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    ema: bool = False
    warmup_epochs: int = 0
    augment_rotation: float = 0.03
    augment_zoom: float = 0.1
    augment_translate: float = 0.0
    augment_contrast: float = 0.15
    augment_gamma: float = 0.0
    mixup_alpha: float = 0.0
    select_fraction: float = 0.0
    early_stopping_patience: int = 0
    heatmap_method: str = "layercam"
    heatmap_layer: str = "block_12_add"

    @classmethod
    def from_dict(cls, values: Dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model settings: {sorted(unknown)}")
        config = cls(**values)
        if config.image_size % features.IMAGE_SIZE_MULTIPLE:
            raise ValueError(f"image_size must be a multiple of {features.IMAGE_SIZE_MULTIPLE} "
                             f"(the equalisation grid), got {config.image_size}")
        if config.class_weighting not in ("balanced", "sqrt", "none"):
            raise ValueError(f"class_weighting must be balanced, sqrt or none, "
                             f"got {config.class_weighting!r}")
        if config.class_balance not in ("weights", "sampling"):
            raise ValueError(f"class_balance must be weights or sampling, "
                             f"got {config.class_balance!r}")
        if config.class_balance == "sampling" and config.class_weighting == "none":
            raise ValueError("class_balance sampling needs class_weighting sqrt or balanced: "
                             "with none it would draw the grades as they come")
        if config.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {config.head!r}")
        if config.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {config.pooling!r}")
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
        if config.warmup_epochs and config.warmup_epochs >= config.finetune_epochs:
            raise ValueError("warmup_epochs must be fewer than finetune_epochs")
        if min(config.augment_rotation, config.augment_zoom, config.augment_translate,
               config.augment_contrast) < 0:
            raise ValueError("augmentation ranges must not be negative")
        # Written `not lo <= x <= hi` so that NaN is refused too.
        if not 0.0 <= config.augment_gamma <= 1.0:
            raise ValueError(f"augment_gamma must be in [0, 1] (gamma within e^±1 = "
                             f"0.37..2.72), got {config.augment_gamma}")
        if not 0.0 <= config.mixup_alpha <= 1.0:
            # Above 1, Beta(alpha, alpha) crowds lambda around 0.5: most training images
            # would be even blends of two knees rather than one knee with a trace of another.
            raise ValueError(f"mixup_alpha must be in [0, 1] (0 = off; 0.1-0.4 is usual), "
                             f"got {config.mixup_alpha}")
        if config.mixup_alpha and config.batch_size < 2:
            raise ValueError(f"mixup_alpha > 0 needs batch_size >= 2 (mixup pairs the images "
                             f"of a batch), got batch_size {config.batch_size}")
        if not 0.0 <= config.select_fraction < 0.5:
            raise ValueError(f"select_fraction must be in [0, 0.5) (a share of the training "
                             f"patients), got {config.select_fraction}")
        if config.early_stopping_patience < 0:
            raise ValueError(f"early_stopping_patience must not be negative, got "
                             f"{config.early_stopping_patience}")
        if config.early_stopping_patience and not config.select_fraction:
            raise ValueError("early_stopping_patience needs select_fraction > 0: the "
                             "reporting split must not choose when to stop")
        if config.tuner_trials < 1 or config.tuner_epochs < 1:
            raise ValueError("tuner_trials and tuner_epochs must be at least 1")
        if config.heatmap_method not in HEATMAP_METHODS:
            raise ValueError(f"heatmap_method must be one of {HEATMAP_METHODS}, "
                             f"got {config.heatmap_method!r}")
        # The layer's existence needs the built model: components/train.py checks it
        # before training.
        if not isinstance(config.heatmap_layer, str) or not config.heatmap_layer:
            raise ValueError(f"heatmap_layer must name a backbone layer, "
                             f"got {config.heatmap_layer!r}")
        return config

    def with_overrides(self, values: Dict) -> "ModelConfig":
        """A checked copy with some settings replaced (e.g. the Tuner's best values)."""
        return ModelConfig.from_dict({**dataclasses.asdict(self), **values})
