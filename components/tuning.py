"""Hyper-parameter search for the TFX Tuner component (keras-tuner, random search).

keras-tuner 1.4 builds and fits Keras 3 models, while this project trains tf_keras
(Keras 2) models, so its stock `Tuner` refuses our model. `KoaTuner` therefore drives the
search itself: keras-tuner's oracle proposes hyper-parameters, each trial trains with the
project's own `train.train` (head phase, then a short fine-tune) and reports the best
validation accuracy; the oracle records it. The TFX Tuner executor only needs the oracle's
best hyper-parameters, which the Trainer then receives (`run_fn` applies them over
params.yaml's settings).

Budget: `tuner_trials` trials of `tuner_epochs` fine-tune epochs each (params.yaml).
"""

import dataclasses
import logging
from typing import Dict

import keras_tuner
import tensorflow_transform as tft
from tfx import v1 as tfx

from components import train
from components.model_config import ModelConfig

logger = logging.getLogger(__name__)

OBJECTIVE = "val_accuracy"

# Settings that decide what a fit trains on (`train.fit_inputs`). The search leaves them at
# the base configuration's values, so every trial shares one training input; with
# class-balanced sampling that means one set of per-grade caches for the whole search.
FIT_INPUT_SETTINGS = ("class_balance", "class_weighting", "batch_size", "seed")


def search_space(hp: keras_tuner.HyperParameters) -> None:
    """Declares the searched settings (names are ModelConfig fields).

    The regularisation knobs of the round-4 recipe (docs/model.md) and the fine-tune
    learning rate. Ordinal smoothing and `balanced` class weights were measured worse on the
    real films (docs/model.md, Results), so they are no longer searched.
    """
    hp.Float("finetune_lr", 3e-4, 3e-3, sampling="log")
    hp.Choice("label_smoothing", [0.0, 0.1, 0.2])
    hp.Choice("weight_decay", [0.0, 0.02, 0.05])
    hp.Choice("dropout", [0.2, 0.4])


class KoaTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """Random search whose trials train with `components.train.train`."""

    def __init__(self, base_config: ModelConfig, train_ds, eval_ds, counts,
                 directory: str, project_name: str = "koa"):
        hyperparameters = keras_tuner.HyperParameters()
        search_space(hyperparameters)
        shared = set(hyperparameters.values) & set(FIT_INPUT_SETTINGS)
        if shared:
            raise ValueError(f"the search space sets {sorted(shared)}, which decide the "
                             f"training input every trial shares; search them elsewhere")
        oracle = keras_tuner.oracles.RandomSearchOracle(
            objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
            max_trials=base_config.tuner_trials, hyperparameters=hyperparameters,
            seed=base_config.seed)
        super().__init__(oracle=oracle, directory=directory, project_name=project_name,
                         overwrite=True)
        self._base = base_config
        self._eval_ds, self._counts = eval_ds, counts
        self._fit_ds, self._weights = train.fit_inputs(train_ds, counts, base_config)

    def run_trial(self, trial, *args, **kwargs) -> Dict[str, float]:
        config = self._base.with_overrides(
            {**trial.hyperparameters.values, "finetune_epochs": self._base.tuner_epochs})
        logger.info("trial %s: %s", trial.trial_id, trial.hyperparameters.values)
        _, history, _ = train.train(config, self._fit_ds, self._eval_ds, self._weights,
                                    sum(self._counts))
        best = max(history[OBJECTIVE])
        logger.info("trial %s: best %s %.4f", trial.trial_id, OBJECTIVE, best)
        return {OBJECTIVE: best}


def tuner_fn(fn_args) -> tfx.components.TunerFnResult:
    """TFX Tuner entry point."""
    config = ModelConfig.from_dict(dict(fn_args.custom_config or {}))
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    # Trials score on the validation split; the selection split is left out of fitting
    # here too, so that a trial trains on what the Trainer will.
    train_ds, eval_ds, _, counts = train.datasets(fn_args, tf_transform_output, config)
    logger.info("tuning %d trials of %d fine-tune epochs over %s", config.tuner_trials,
                config.tuner_epochs, dataclasses.asdict(config))
    tuner = KoaTuner(config, train_ds, eval_ds, counts, directory=fn_args.working_dir)
    return tfx.components.TunerFnResult(tuner=tuner, fit_kwargs={})
