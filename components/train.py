"""Training for the TFX Trainer: datasets, loss, class weights or class-balanced sampling,
mixup, the two-phase fit, `run_fn`.

The Trainer calls `run_fn`. Settings arrive in `fn_args.custom_config` (params.yaml's
`model:` section, documented by `components.model_config.ModelConfig`); when the pipeline
has a Tuner, its best hyper-parameters override them.
"""

import dataclasses
import logging
import os
import platform
import time
from typing import Dict, List, Optional

import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from components import autograph_rules, export, features, post_hoc
from components.model import BACKBONE, build_model, tapped_backbone
from components.model_config import ModelConfig

keras = tf.keras
logger = logging.getLogger(__name__)


def _neighbour_matrix() -> tf.Tensor:
    """[K, K]: row g spreads one unit of mass evenly over the grades next to g (all of it
    to the one neighbour of grade 0 or K-1)."""
    grade = tf.range(features.NUM_GRADES)
    # one_hot of -1 or NUM_GRADES is all zeros: the edge grades have one neighbour.
    neighbours = (tf.one_hot(grade - 1, features.NUM_GRADES)
                  + tf.one_hot(grade + 1, features.NUM_GRADES))
    return neighbours / tf.reduce_sum(neighbours, axis=-1, keepdims=True)


def _target_distributions(labels: tf.Tensor) -> tf.Tensor:
    """Training targets as distributions over the grades, float32 [N, K]: grade indices
    ([N] or [N, 1], any numeric dtype) become one-hot rows; rows that already are
    distributions ([N, K], e.g. mixup's) pass through."""
    if labels.shape.rank == 2 and labels.shape[-1] == features.NUM_GRADES:
        return tf.cast(labels, tf.float32)
    grade = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    return tf.one_hot(grade, features.NUM_GRADES)


def ordinal_smoothing_loss(smoothing: float, uniform: float = 0.0):
    """Cross-entropy against targets that give `smoothing` of the mass to the grades next to
    the label (all of it to the one neighbour of grade 0 or 4), then spread `uniform` of
    the result evenly over all grades (label smoothing).

    Labels are grade indices ([N] or [N, 1]) or distributions over the grades (float
    [N, 5], mixup's targets). Both smoothings are linear maps that keep the sum, so
    smoothing a mixed target equals mixing the smoothed targets.
    """
    def loss(labels, probabilities):
        target = _target_distributions(labels)
        target = (1.0 - smoothing) * target + smoothing * tf.matmul(target,
                                                                    _neighbour_matrix())
        target = (1.0 - uniform) * target + uniform / features.NUM_GRADES
        return keras.losses.categorical_crossentropy(target, probabilities)

    loss.__name__ = "ordinal_smoothing_crossentropy"
    return loss


def grade_accuracy(labels: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """1.0 where the most probable grade is the label's, else 0.0; float32 [N].

    Labels as in `ordinal_smoothing_loss`; for a mixup target the label's grade is the one
    with the larger share.
    """
    predicted = tf.argmax(probabilities, axis=-1)
    return tf.cast(tf.equal(predicted, tf.argmax(_target_distributions(labels), axis=-1)),
                   tf.float32)


def mixup_lambda(seed: tf.Tensor, alpha: float) -> tf.Tensor:
    """One draw of lambda ~ Beta(alpha, alpha), float32 scalar in [0, 1].

    Args:
      seed: int32/int64 [2], the stateless random seed.
      alpha: > 0.
    """
    # Beta(a, b) = G_a / (G_a + G_b) for independent Gamma(a), Gamma(b) draws.
    draws = tf.random.stateless_gamma([2], seed=seed, alpha=alpha)
    # Both draws can underflow to 0 for small alpha; lambda 0 is then a valid mix.
    return tf.math.divide_no_nan(draws[0], draws[0] + draws[1])


def mixup_batch(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float,
                weights: Optional[Dict[int, float]] = None):
    """Mixup (Zhang et al. 2018) of one training batch with a shuffled copy of itself.

    With one lambda ~ Beta(alpha, alpha) for the batch and a random partner j(i) for each
    image: image_i <- lambda image_i + (1 - lambda) image_j, and the same for the one-hot
    grades.

    Args:
      images: float [N, H, W, C].
      labels: grade indices, [N] or [N, 1].
      seed: int32/int64 [2], the stateless random seed of this batch.
      alpha: the Beta parameter, > 0.
      weights: per-grade loss weights (`class_weights`), or None.

    Returns:
      (mixed images, same shape and dtype; targets float32 [N, 5], rows summing to 1;
      sample weights float32 [N], or None without `weights`). An example's weight is its
      target's expected class weight, lambda w(y_i) + (1 - lambda) w(y_j): the class weight
      of a pure example is unchanged, it moves smoothly with lambda (Keras's class_weight
      would take the argmax grade's and jump at 0.5), and since partners are a permutation
      of the batch the weights' mean stays that of the unmixed batch.
    """
    lambda_seed, shuffle_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    lam = mixup_lambda(lambda_seed, alpha)
    partner = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(images)[0]),
                                                       seed=shuffle_seed)
    targets = _target_distributions(labels)
    targets = lam * targets + (1.0 - lam) * tf.gather(targets, partner)
    mix = tf.cast(lam, images.dtype)
    images = mix * images + (1.0 - mix) * tf.gather(images, partner)
    if weights is None:
        return images, targets, None
    per_grade = tf.constant([weights[g] for g in range(features.NUM_GRADES)], tf.float32)
    return images, targets, tf.linalg.matvec(targets, per_grade)


def mixup_dataset(dataset: tf.data.Dataset, alpha: float, seed: int,
                  weights: Optional[Dict[int, float]] = None) -> tf.data.Dataset:
    """`mixup_batch` on every batch of a batched (features, labels) training dataset.

    Only the image feature is mixed. Yields (features, targets [N, 5]) or, with
    `weights`, (features, targets, sample weights [N]); the weights then replace Keras's
    `class_weight`. Each pass over the data draws new lambdas and partners, reproducibly
    from `seed`.
    """
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    key = features.TRANSFORMED_IMAGE_KEY

    def mix(batch, batch_seed):
        inputs, labels = batch
        images, targets, sample_weights = mixup_batch(inputs[key], labels, batch_seed, alpha,
                                                      weights)
        mixed = {**inputs, key: images}
        return (mixed, targets) if sample_weights is None else (mixed, targets,
                                                                sample_weights)

    return tf.data.Dataset.zip((dataset, seeds)).map(mix).prefetch(tf.data.AUTOTUNE)


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


def sampling_probabilities(counts: List[int], weights: Dict[int, float]) -> List[float]:
    """Probability of drawing each grade, proportional to count x class weight.

    Drawing grade g with p_g ∝ c_g w_g and weighting the loss by w_g give the same
    expected gradient; sampling spends the steps on the rarer grades instead of scaling
    their loss. E.g. counts [2286, 1046, 1516, 757, 173] with "sqrt" weights draw
    [.30, .20, .24, .17, .08].
    """
    raw = [c * weights[g] for g, c in enumerate(counts)]
    return [r / sum(raw) for r in raw]


def class_sampled_dataset(dataset: tf.data.Dataset, counts: List[int],
                          weights: Dict[int, float], batch_size: int,
                          seed: int) -> tf.data.Dataset:
    """Class-balanced sampling of a batched (features, grade) training dataset.

    Each pass yields sum(counts) films drawn with replacement, grade g with probability
    `sampling_probabilities(counts, weights)[g]`, in batches of `batch_size` (so an epoch
    has as many steps as one over `dataset`); within a grade, films come in a new random
    order on every pass over that grade. Each grade's films are cached in memory after
    its first pass (all of them: sum(counts) x image bytes, 1.2 GB for 5,778 films of
    224 x 224 float32), and shuffled with a buffer as large as the grade.
    """
    probabilities = sampling_probabilities(counts, weights)
    films = dataset.unbatch()
    per_grade = [
        films.filter(lambda x, y, g=g: tf.equal(tf.reshape(y, []), g)).cache()
        .shuffle(max(c, 1), seed=seed + g, reshuffle_each_iteration=True).repeat()
        for g, c in enumerate(counts)]
    drawn = tf.data.Dataset.sample_from_datasets(
        per_grade, weights=probabilities, seed=seed, rerandomize_each_iteration=True)
    return drawn.take(sum(counts)).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def fit_inputs(train_ds: tf.data.Dataset, counts: List[int], config: ModelConfig):
    """What the fit trains on: (dataset, class weights or None).

    `class_balance: weights` keeps `train_ds` and weights the loss by `class_weights`;
    `sampling` draws the grades in the same proportions instead
    (`class_sampled_dataset`), with an unweighted loss.
    """
    weights = class_weights(counts, config.class_weighting)
    if weights:
        logger.info("class weights: %s", {g: round(w, 3) for g, w in weights.items()})
    if config.class_balance != "sampling":
        return train_ds, weights
    logger.info("class-balanced sampling, probability per grade: %s (training films per "
                "grade: %s)", [round(p, 3) for p in sampling_probabilities(counts, weights)],
                counts)
    return class_sampled_dataset(train_ds, counts, weights, config.batch_size,
                                 config.seed), None


# Hash buckets of patient ids for the selection split: shares in steps of 0.1 %.
_SELECT_BUCKETS = 1000


def in_selection_split(patient_ids: tf.Tensor, fraction: float) -> tf.Tensor:
    """bool, same shape as `patient_ids` (string): True for the patients whose FarmHash
    fingerprint falls in the first `fraction` of the buckets; the same patients in every
    run and on every machine, both knees of a patient on the same side."""
    buckets = tf.strings.to_hash_bucket_fast(patient_ids, _SELECT_BUCKETS)
    return buckets < int(round(fraction * _SELECT_BUCKETS))


def _dataset(files, data_accessor, tf_transform_output, batch_size: int, shuffle: bool,
             seed: int, keep=None) -> tf.data.Dataset:
    dataset = data_accessor.tf_dataset_factory(
        files,
        tfxio.TensorFlowDatasetOptions(
            batch_size=batch_size, label_key=features.LABEL_KEY, num_epochs=1,
            shuffle=shuffle, shuffle_seed=seed, shuffle_buffer_size=1024),
        tf_transform_output.transformed_metadata.schema,
    )
    if keep is not None:
        dataset = (dataset.unbatch()
                   .filter(lambda x, y: keep(x[features.PATIENT_KEY]))
                   .batch(batch_size))
    # The model takes the image; the input-check measures are for the exported graph.
    key = features.TRANSFORMED_IMAGE_KEY
    return dataset.map(lambda x, y: ({key: x[key]}, y)).prefetch(tf.data.AUTOTUNE)


def datasets(fn_args, tf_transform_output, config: ModelConfig):
    """The Transform output as Keras datasets of ({image_xf: float32 [B, S, S, 1]}, int64
    grade [B]) batches.

    Returns:
      (train_ds shuffled, eval_ds, select_ds, counts): `select_ds` holds the training
      patients set aside by `config.select_fraction` (`in_selection_split`), in file
      order, and `train_ds` the rest; None and all of them when the fraction is 0.
      `counts` is the training (fitting) examples per grade.

    Raises:
      ValueError: the selection split came out empty (too few training patients for
        the fraction), or a label outside 0..4.
    """
    fraction = config.select_fraction
    fit = (lambda ids: tf.logical_not(in_selection_split(ids, fraction))) if fraction else None
    train_ds = _dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                        config.batch_size, True, config.seed, keep=fit)
    eval_ds = _dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                       config.batch_size, False, config.seed)
    select_ds = None
    if fraction:
        select_ds = _dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                             config.batch_size, False, config.seed,
                             keep=lambda ids: in_selection_split(ids, fraction))
        select_counts = _label_counts(select_ds)
        if not sum(select_counts):
            raise ValueError(f"select_fraction {fraction} set aside no training patient: "
                             f"too few patients for it; raise it or set it to 0")
        logger.info("selection split (%.0f %% of training patients) per grade: %s",
                    100 * fraction, select_counts)
    counts = _label_counts(train_ds)
    logger.info("training examples per grade: %s", counts)
    return train_ds, eval_ds, select_ds, counts


def fn_args_for(transformed_examples_uri: str):
    """The parts of TFX's FnArgs that `datasets` reads, for a Transform output read
    outside the Trainer (benchmarks, tests): `train_files` and `eval_files` (one glob each
    over Split-train and Split-eval) and a `data_accessor` built the way the Trainer
    builds it (tfx.components.util.tfxio_utils).

    Raises:
      ValueError: the directory has no Split-train or Split-eval.
    """
    from types import SimpleNamespace

    from tfx.components.trainer.fn_args_utils import DataAccessor
    from tfx.components.util import tfxio_utils
    from tfx.types import artifact_utils, standard_artifacts

    missing = [split for split in ("train", "eval") if not os.path.isdir(
        os.path.join(transformed_examples_uri, f"Split-{split}"))]
    if missing:
        raise ValueError(f"{transformed_examples_uri} is not a Transform output with train "
                         f"and eval splits: no Split-{', Split-'.join(missing)}")
    examples = standard_artifacts.Examples()
    examples.uri = transformed_examples_uri
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    factory = tfxio_utils.get_tf_dataset_factory_from_artifact([examples], [])
    files = {split: [os.path.join(transformed_examples_uri, f"Split-{split}", "*")]
             for split in ("train", "eval")}
    return SimpleNamespace(train_files=files["train"], eval_files=files["eval"],
                           data_accessor=DataAccessor(factory, None, None))


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


class BestEpochOnSelection(keras.callbacks.Callback):
    """Scores the model on the selection split after every epoch and keeps the weights of
    the epoch with the lowest selection loss; with `patience` > 0 it stops training after
    that many epochs without a lower one (Prechelt 1998, "Early stopping - but when?").

    With an EMA optimizer the averaged weights are scored and kept (what the fit would
    end with), and the raw ones put back to go on training. After `fit`, restore with
    `model.set_weights(best_weights)`; `best_epoch` is 0-based within this fit.
    """

    def __init__(self, select_ds: tf.data.Dataset, patience: int = 0):
        super().__init__()
        self._select_ds = select_ds
        self._patience = patience
        self._since_best = 0
        self.best_epoch: Optional[int] = None
        self.best_loss = float("inf")
        self.best_accuracy = float("nan")
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        variables = self.model.trainable_variables
        raw = [v.numpy() for v in variables] if getattr(optimizer, "use_ema", False) else None
        if raw is not None:
            optimizer.finalize_variable_values(variables)
        loss, accuracy = self.model.evaluate(self._select_ds, verbose=0)
        if logs is not None:
            logs.update(select_loss=loss, select_accuracy=accuracy)
        if loss < self.best_loss:
            self.best_epoch, self.best_loss, self.best_accuracy = epoch, loss, accuracy
            self.best_weights = self.model.get_weights()
            self._since_best = 0
        else:
            self._since_best += 1
            if self._patience and self._since_best >= self._patience:
                self.model.stop_training = True
        if raw is not None:
            for variable, value in zip(variables, raw):
                variable.assign(value)


def finetune_schedule(config: ModelConfig, steps_per_epoch: int):
    """Learning rate of the fine-tune phase per step: linear warm-up from 0 over
    `warmup_epochs`, then cosine decay from `finetune_lr` to 0 (Loshchilov & Hutter 2017)."""
    warmup = steps_per_epoch * config.warmup_epochs
    decay = steps_per_epoch * max(1, config.finetune_epochs - config.warmup_epochs)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay, warmup_target=config.finetune_lr, warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(config.finetune_lr, decay)


def train(config: ModelConfig, train_ds: tf.data.Dataset, eval_ds: tf.data.Dataset,
          weights: Optional[Dict[int, float]], examples_per_epoch: int,
          select_ds: Optional[tf.data.Dataset] = None):
    """Frozen-backbone head training, then fine-tuning. Returns (model, history, stats).

    With `config.mixup_alpha` both phases fit on `mixup_dataset(train_ds)`; `eval_ds` and
    the returned model's inference path are the same either way. With `select_ds` the
    fine-tune epoch with the lowest loss on it is restored (`BestEpochOnSelection`) and
    `stats["selection"]` says which. `history` has one entry per epoch for every key
    (None where a phase did not measure it).
    """
    autograph_rules.keep_autograph_out_of_tf_keras()
    keras.utils.set_random_seed(config.seed)
    model = build_model(config)
    # Export computes the served heatmap on this layer: a wrong name fails now, not after
    # hours of training.
    tapped_backbone(model, [config.heatmap_layer])
    backbone = model.get_layer(BACKBONE)
    history: Dict[str, List[float]] = {}
    stats = {"train_seconds": 0.0, "train_images": 0}
    loss = (ordinal_smoothing_loss(config.ordinal_smoothing, config.label_smoothing)
            if config.ordinal_smoothing or config.label_smoothing or config.mixup_alpha
            else "sparse_categorical_crossentropy")
    # Mixup changes the training batches only: validation, post_hoc.fit and export keep
    # the plain datasets. Its targets are distributions, so the accuracy metric takes both
    # kinds of label, and the class weights travel as per-example sample weights.
    if config.mixup_alpha:
        fit_ds = mixup_dataset(train_ds, config.mixup_alpha, config.seed, weights)
        fit_weights = None
        def accuracy():
            return keras.metrics.MeanMetricWrapper(grade_accuracy, name="accuracy")
    else:
        fit_ds, fit_weights = train_ds, weights

        def accuracy():
            return keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def run_phase(phase, epochs, learning_rate, fine_tune=False):
        if epochs <= 0:
            return
        averaging = dict(use_ema=True, ema_momentum=0.99) if fine_tune and config.ema else {}
        if fine_tune and config.weight_decay:
            optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay,
                                               **averaging)
        else:
            optimizer = keras.optimizers.Adam(learning_rate, **averaging)
        model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy()])
        timer = _ThroughputLogger(examples_per_epoch, phase)
        selector = (BestEpochOnSelection(select_ds, config.early_stopping_patience)
                    if fine_tune and select_ds is not None else None)
        logger.info("%s: %d epochs, %d trainable weights", phase, epochs,
                    len(model.trainable_weights))
        # The selector first, so that the timer's log line shows its scores.
        result = model.fit(fit_ds, validation_data=eval_ds, epochs=epochs,
                           class_weight=fit_weights, verbose=0,
                           callbacks=[selector, timer] if selector else [timer])
        done = len(history.get("loss", []))
        for key, values in result.history.items():
            history.setdefault(key, [None] * done).extend(float(v) for v in values)
        epochs_run = len(timer.epoch_seconds)
        stats["train_seconds"] += sum(timer.epoch_seconds)
        stats["train_images"] += examples_per_epoch * epochs_run
        if selector:
            model.set_weights(selector.best_weights)
            stats["selection"] = {
                "epoch": selector.best_epoch + 1, "epochs_run": epochs_run,
                "loss": selector.best_loss, "accuracy": selector.best_accuracy}
            logger.info("restored %s epoch %d of %d run (%d planned): selection loss %.4f, "
                        "accuracy %.4f", phase, selector.best_epoch + 1, epochs_run, epochs,
                        selector.best_loss, selector.best_accuracy)

    backbone.trainable = False
    run_phase("head", config.head_epochs, config.head_lr)
    backbone.trainable = True
    for layer in backbone.layers[:config.finetune_from]:
        layer.trainable = False
    steps_per_epoch = max(1, -(-examples_per_epoch // config.batch_size))
    run_phase("fine-tune", config.finetune_epochs, finetune_schedule(config, steps_per_epoch),
              fine_tune=True)
    return model, history, stats


def _hardware() -> str:
    """What trained the model, for the experiment record."""
    gpus = tf.config.list_physical_devices("GPU")
    return (f"{len(os.sched_getaffinity(0))} CPU cores ({platform.machine()}), "
            + (f"{len(gpus)} GPU" if gpus else "no GPU"))


def hyperparameter_values(config: Dict) -> Dict:
    """ModelConfig overrides from a serialized keras-tuner HyperParameters (the Tuner's
    output)."""
    import keras_tuner  # only where a Tuner ran
    return dict(keras_tuner.HyperParameters.from_config(config).values)


def run_fn(fn_args) -> None:
    """TFX Trainer entry point.

    Settings come from `fn_args.custom_config`; when the pipeline has a Tuner, its best
    hyper-parameters (`fn_args.hyperparameters`) override them.
    """
    config = ModelConfig.from_dict(dict(fn_args.custom_config or {}))
    tuned = getattr(fn_args, "hyperparameters", None)
    if tuned:
        config = config.with_overrides(hyperparameter_values(tuned))
    logger.info("training with %s", config)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train_ds, eval_ds, select_ds, counts = datasets(fn_args, tf_transform_output, config)
    fit_ds, weights = fit_inputs(train_ds, counts, config)
    model, history, stats = train(config, fit_ds, eval_ds, weights, sum(counts), select_ds)
    stats["train_images_per_second"] = (
        stats["train_images"] / stats["train_seconds"] if stats["train_seconds"] else 0.0)
    stats.update(post_hoc.fit(model, config, train_ds, eval_ds))
    stats["config"] = dataclasses.asdict(config)
    stats["hardware"] = _hardware()
    export.export(model, tf_transform_output, fn_args.serving_model_dir, history, stats,
                  tta=config.tta, heatmap_method=config.heatmap_method,
                  heatmap_layer=config.heatmap_layer)
    logger.info("exported SavedModel to %s", fn_args.serving_model_dir)
