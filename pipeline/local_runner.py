"""Runs the pipeline on this machine: LocalDagRunner, Beam DirectRunner, SQLite MLMD."""

import dataclasses
import logging
import os
from typing import List

from tfx import v1 as tfx

from components import evaluation
from pipeline import configs, lineage
from pipeline.params import Params
from pipeline.pipeline import create_pipeline, create_pipeline_with_tuner
from pipeline.run_record import RunRecord, latest_run

logger = logging.getLogger(__name__)


def beam_args(workers: int) -> List[str]:
    """DirectRunner options: in-memory for one worker, processes for several.

    Each extra process imports TensorFlow (seconds and GiBs each), which only pays
    off on large data.
    """
    mode = "in_memory" if workers == 1 else "multi_processing"
    return [f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"]


def run(params: Params, project_dir: str = ".") -> RunRecord:
    """Runs the whole pipeline on the ingested data and returns what it produced.

    Args:
      params: settings from params.yaml; `run.tune` puts a Tuner ahead of the Trainer
        (model.tuner_* params).
      project_dir: the project root; all default locations are relative to it.

    Returns:
      The run's record (also written to configs.RUN_RECORD).
    """
    def path(relative):
        return os.path.abspath(os.path.join(project_dir, relative))

    examples_dir = path(configs.INGESTED_DIR)
    if not os.path.isdir(os.path.join(examples_dir, "train")):
        raise FileNotFoundError(
            f"no ingested data in {examples_dir}: run `koa ingest` (or `dvc repro`) first")
    metadata_path = path(configs.METADATA_PATH)
    os.makedirs(os.path.dirname(metadata_path), exist_ok=True)

    factory = create_pipeline_with_tuner if params.run.tune else create_pipeline
    pipeline = factory(
        pipeline_name=configs.PIPELINE_NAME,
        pipeline_root=path(configs.PIPELINE_ROOT),
        examples_dir=examples_dir,
        schema_path=configs.SCHEMA_PATH,
        model_config=params.model,
        eval_config=evaluation.build_eval_config(**dataclasses.asdict(params.gate)),
        serving_dir=os.path.join(path(configs.SERVING_MODEL_DIR), configs.MODEL_NAME),
        model_name=configs.MODEL_NAME,
        lineage=lineage.collect(path("."), examples_dir, path(params.data.source),
                                path(configs.DATA_DVC_FILE)),
        beam_pipeline_args=beam_args(params.run.beam_workers),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            metadata_path),
    )
    logger.info("running pipeline %s (root %s)", configs.PIPELINE_NAME,
                path(configs.PIPELINE_ROOT))
    tfx.orchestration.LocalDagRunner().run(pipeline)
    record = latest_run(metadata_path)
    record.write(path(configs.RUN_RECORD))
    if record.pushed:
        logger.info("run %s: model blessed and pushed to %s", record.run_id,
                    record.pushed_destination)
    else:
        logger.warning("run %s: model %s, NOT pushed", record.run_id,
                       "blessed" if record.blessed else "not blessed")
    return record
