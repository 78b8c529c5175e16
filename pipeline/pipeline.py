"""Connects the TFX components of the KL-grading pipeline. Settings come in as arguments."""

import dataclasses
from typing import Any, Dict, List, Optional

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from components import features
from components.anomaly_gate import AnomalyGate
from components.model_config import ModelConfig
from components.train import run_fn
from components.preprocessing import preprocessing_fn
from components.serving_pusher import ServingPusher
from components.tuning import tuner_fn


def _python_path(fn) -> str:
    # TFX loads these by dotted path; deriving it from the object makes a typo an
    # import error now rather than a failure deep inside a run.
    return f"{fn.__module__}.{fn.__name__}"


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    examples_dir: str,
    schema_path: str,
    model_config: ModelConfig,
    eval_config: tfma.EvalConfig,
    serving_dir: str,
    model_name: str,
    lineage: Dict[str, Any],
    beam_pipeline_args: List[str],
    metadata_connection_config: Optional[Any] = None,
    *,
    with_tuner: bool = False,
) -> tfx.dsl.Pipeline:
    """The pipeline: import -> validate -> transform -> train -> evaluate -> push.

    Args:
      pipeline_name: name recorded in ML Metadata.
      pipeline_root: where component outputs are written.
      examples_dir: ingested TFRecords, one folder per split (train/, eval/).
      schema_path: curated schema the data is validated against.
      model_config: hyper-parameters for the Trainer (and the Transform image size).
      eval_config: TFMA config with the blessing thresholds.
      serving_dir: `<serving_dir>/<version>/` is where blessed models are pushed.
      model_name: name of the model in the model card.
      lineage: recorded beside each pushed model (data hash, git commit...).
      beam_pipeline_args: Beam options for the Beam-based components.
      metadata_connection_config: ML Metadata store; None lets the orchestrator decide.
      with_tuner: put a Tuner between Transform and Trainer (see
        `create_pipeline_with_tuner`).
    """
    example_gen = tfx.components.ImportExampleGen(
        input_base=examples_dir,
        input_config=tfx.proto.Input(splits=[
            tfx.proto.Input.Split(name=features.TRAIN_SPLIT, pattern=f"{features.TRAIN_SPLIT}/*"),
            tfx.proto.Input.Split(name=features.EVAL_SPLIT, pattern=f"{features.EVAL_SPLIT}/*"),
        ]))

    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])

    # A curated schema rather than one re-inferred on every run: inferred schemas accept
    # whatever today's data looks like, so they cannot catch a bad batch.
    schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_path)

    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"])

    anomaly_gate = AnomalyGate(anomalies=example_validator.outputs["anomalies"])

    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=_python_path(preprocessing_fn),
        custom_config={"image_size": model_config.image_size,
                       "equalisation": model_config.equalisation})
    transform.add_upstream_node(anomaly_gate)

    data_args = dict(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=[features.TRAIN_SPLIT]),
        eval_args=tfx.proto.EvalArgs(splits=[features.EVAL_SPLIT]),
        custom_config=dataclasses.asdict(model_config))
    tuning = []
    if with_tuner:
        # Short trials on the same data; the Trainer gets the best hyper-parameters.
        tuner = tfx.components.Tuner(tuner_fn=_python_path(tuner_fn), **data_args)
        data_args["hyperparameters"] = tuner.outputs["best_hyperparameters"]
        tuning = [tuner]

    trainer = tfx.components.Trainer(run_fn=_python_path(run_fn), **data_args)

    baseline_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")

    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline_resolver.outputs["model"],
        eval_config=eval_config,
        example_splits=[features.EVAL_SPLIT])

    pusher = ServingPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        evaluation=evaluator.outputs["evaluation"],
        base_directory=serving_dir,
        model_name=model_name,
        lineage=lineage)

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator,
                    anomaly_gate, transform, *tuning, trainer, baseline_resolver, evaluator,
                    pusher],
        enable_cache=False,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args,
    )


def create_pipeline_with_tuner(**settings) -> tfx.dsl.Pipeline:
    """The same pipeline with a Tuner between Transform and Trainer.

    Takes exactly `create_pipeline`'s arguments, by keyword. The Tuner
    (components/tuning.py) runs `model_config.tuner_trials` short trials on the Transform
    output; the Trainer then trains with its best hyper-parameters in place of the
    corresponding `model_config` values.
    """
    return create_pipeline(**settings, with_tuner=True)
