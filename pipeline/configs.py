"""Constants of the KL-grading pipeline: names and default locations.

Tunable settings (data, model, gate) live in params.yaml, read by pipeline/params.py.
"""

import os

PIPELINE_NAME = "koa-kl-grading"
MODEL_NAME = "koa"

PARAMS_FILE = "params.yaml"
DATA_DVC_FILE = "data.dvc"

# Working directories, relative to the project root. DVC never deletes these: the MLMD
# store and the pushed models must survive `dvc repro`.
INGESTED_DIR = os.path.join("build", "ingested")
PIPELINE_ROOT = os.path.join("build", "tfx")
METADATA_PATH = os.path.join(PIPELINE_ROOT, "metadata.sqlite")
SERVING_MODEL_DIR = "serving_model"
RUN_RECORD = os.path.join("build", "last_run.json")
METRICS_DIR = "metrics"
KFP_OUTPUT = os.path.join("build", "kfp", "koa_pipeline.json")

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "schema.pbtxt")

# Container image for Kubeflow Pipelines: the project installed on the TFX base image.
KFP_DEFAULT_IMAGE = "ghcr.io/koa-grading/koa-pipeline:latest"
