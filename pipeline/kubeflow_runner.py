"""Compiles the pipeline for Kubeflow Pipelines v2 (a pipeline-spec JSON file).

The compiled spec runs every component in `image`, which must contain this project
installed on a TFX 1.16 base image; the pipeline root and the serving directory must be
storage the cluster can reach (gs://, s3:// through a mounted volume, ...).
"""

import dataclasses
import logging
import os

from tfx import v1 as tfx

from components import evaluation
from pipeline import configs
from pipeline.params import Params
from pipeline.pipeline import create_pipeline

logger = logging.getLogger(__name__)


def compile_pipeline(params: Params, output_file: str, image: str, pipeline_root: str,
                     examples_dir: str, serving_dir: str, beam_args=()) -> str:
    """Writes the KFP v2 pipeline spec and returns its path.

    Args:
      params: settings from params.yaml.
      output_file: where the JSON spec is written.
      image: container image for every component.
      pipeline_root: artifact root visible to the cluster.
      examples_dir: ingested TFRecords visible to the cluster.
      serving_dir: model base path the production TF Serving watches.
      beam_args: Beam options, e.g. for Dataflow or a Flink/Spark job server.
    """
    pipeline = create_pipeline(
        pipeline_name=configs.PIPELINE_NAME,
        pipeline_root=pipeline_root,
        examples_dir=examples_dir,
        # The schema ships inside the installed package, at the same path in the image.
        schema_path=configs.SCHEMA_PATH,
        model_config=params.model,
        eval_config=evaluation.build_eval_config(**dataclasses.asdict(params.gate)),
        serving_dir=serving_dir,
        model_name=configs.MODEL_NAME,
        lineage={"data_source": examples_dir},
        beam_pipeline_args=list(beam_args),
    )
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_file)),
        output_filename=os.path.basename(output_file))
    runner.run(pipeline, write_out=True)
    logger.info("wrote Kubeflow Pipelines v2 spec to %s", output_file)
    return output_file
