"""The pipeline with a Tuner: wiring, KFP compilation, and a real (tiny) search."""

import json

import keras_tuner
import numpy as np
import pytest
import tensorflow as tf
from tfx import v1 as tfx

from components import evaluation, train, tuning
from components.model_config import ModelConfig
from pipeline import pipeline as pipeline_lib


def _build(create, tmp_path, **model_settings):
    config = ModelConfig(image_size=32, weights="none", **model_settings)
    return create(
        pipeline_name="koa-test", pipeline_root=str(tmp_path / "root"),
        examples_dir=str(tmp_path / "ingested"), schema_path=str(tmp_path / "schema.pbtxt"),
        model_config=config,
        eval_config=evaluation.build_eval_config([0.0] * 5, 0.0, 1.0),
        serving_dir=str(tmp_path / "serving"), model_name="koa", lineage={},
        beam_pipeline_args=[])


def _by_id(pipeline):
    return {component.id: component for component in pipeline.components}


def test_tuner_sits_between_transform_and_trainer_and_feeds_it(tmp_path):
    tuned = _by_id(_build(pipeline_lib.create_pipeline_with_tuner, tmp_path, tuner_trials=2))
    tuner, trainer = tuned["Tuner"], tuned["Trainer"]
    assert trainer.inputs["hyperparameters"].producer_component_id == "Tuner"
    assert tuner.inputs["examples"].producer_component_id == "Transform"
    assert json.loads(tuner.exec_properties["custom_config"])["tuner_trials"] == 2
    assert tuner.exec_properties["tuner_fn"] == "components.tuning.tuner_fn"

    plain = _by_id(_build(pipeline_lib.create_pipeline, tmp_path))
    assert "Tuner" not in plain and "hyperparameters" not in plain["Trainer"].inputs
    assert set(tuned) - set(plain) == {"Tuner"}


def test_pipeline_with_tuner_compiles_for_kubeflow(tmp_path):
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image="koa:test"),
        output_dir=str(tmp_path), output_filename="spec.json")
    runner.run(_build(pipeline_lib.create_pipeline_with_tuner, tmp_path), write_out=True)
    spec = json.loads((tmp_path / "spec.json").read_text())
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    assert "Tuner" in tasks
    assert "Tuner" in tasks["Trainer"].get("dependentTasks", [])


def test_search_space_leaves_the_shared_training_input_alone(tmp_path, monkeypatch):
    searched = keras_tuner.HyperParameters()
    tuning.search_space(searched)
    assert not set(searched.values) & set(tuning.FIT_INPUT_SETTINGS)

    def with_sampling_searched(hp):
        hp.Choice("class_balance", ["weights", "sampling"])
        hp.Float("finetune_lr", 3e-4, 3e-3)

    monkeypatch.setattr(tuning, "search_space", with_sampling_searched)
    train_ds, eval_ds, counts = _tiny_datasets()
    with pytest.raises(ValueError, match=r"\['class_balance'\].*training input"):
        tuning.KoaTuner(ModelConfig(image_size=32, weights="none"), train_ds, eval_ds,
                        counts, directory=str(tmp_path))


def _tiny_datasets(seed=0):
    """Images whose brightness encodes the grade: learnable in one short epoch."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(5), 12)
    images = (labels[:, None, None, None] / 4.0 * 0.8 + 0.1
              + rng.normal(0, 0.02, (len(labels), 32, 32, 1))).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(({"image_xf": images}, labels)).batch(16)
    return ds, ds, [12] * 5


@pytest.mark.slow
def test_search_records_trials_and_its_best_values_configure_the_trainer(tmp_path,
                                                                        monkeypatch):
    base = ModelConfig(image_size=32, weights="none", head_epochs=0, batch_size=16,
                       tuner_trials=2, tuner_epochs=1, class_weighting="sqrt",
                       class_balance="sampling")
    train_ds, eval_ds, counts = _tiny_datasets()
    built = []
    fit_inputs = train.fit_inputs
    monkeypatch.setattr(train, "fit_inputs",
                        lambda *args: built.append(args) or fit_inputs(*args))
    tuner = tuning.KoaTuner(base, train_ds, eval_ds, counts, directory=str(tmp_path))
    tuner.search()
    trials = [t for t in tuner.oracle.trials.values() if t.score is not None]
    assert len(trials) == 2
    # Both trials trained on one sampled input, built from the base configuration.
    assert len(built) == 1 and built[0][2] is base
    best = tuner.get_best_hyperparameters()[0]
    assert best.values["label_smoothing"] in (0.0, 0.1, 0.2)
    assert best.values["weight_decay"] in (0.0, 0.02, 0.05)
    assert 3e-4 <= best.values["finetune_lr"] <= 3e-3

    # What the TFX Tuner writes is what run_fn reads back and applies.
    values = train.hyperparameter_values(best.get_config())
    tuned = base.with_overrides(values)
    assert (tuned.label_smoothing, tuned.weight_decay, tuned.finetune_lr,
            tuned.dropout) == (values["label_smoothing"], values["weight_decay"],
                               pytest.approx(values["finetune_lr"]), values["dropout"])
