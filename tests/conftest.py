"""Fixtures shared by all test areas: the shared-data location and one real pipeline run.

The pipeline run is the expensive part of the suite (a few minutes on 2 cores), so it
happens once per session on a tiny SYNTHETIC set at a small image size, and the
pipeline, model and evaluation tests all read its artifacts.
"""

import dataclasses
import os
import sys
from pathlib import Path

import pytest

from components import features

# Same Keras flavour as the product code, before anything imports TensorFlow.
features.select_keras_2()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
# The example SavedModels of the server, web and benchmark tests (`import example_model`).
sys.path.insert(0, str(REPO / "tests" / "models"))
# Test-file builders shared by several areas (`import dicom_testlib`); appended, so the
# project's packages keep precedence over the tests/<package>/ folders.
sys.path.append(str(REPO / "tests"))


def shared_dir() -> Path:
    """The read-only shared material (real radiographs, weights), maybe absent."""
    return Path(os.environ.get("KOA_SHARED_DIR", REPO.parent / "shared"))


@dataclasses.dataclass
class PipelineRun:
    """A finished pipeline run in its own project directory."""

    project_dir: Path
    data_dir: Path
    record: "object"  # pipeline.run_record.RunRecord
    params: "object"  # pipeline.params.Params


def tiny_params(**gate):
    """Settings that make the pipeline finish in minutes on the tiny synthetic set."""
    from pipeline import params as params_lib

    return params_lib.parse({
        "data": {"source": "data", "eval_fraction": 0.25, "seed": 1},
        "model": {"image_size": 64, "weights": "none", "head_epochs": 0,
                  "finetune_epochs": 12, "batch_size": 16, "finetune_lr": 0.002,
                  "class_weighting": "none",
                  # The e2e run exercises the ordinal-smoothing loss, test-time
                  # augmentation, grade offsets and the epoch chosen on a selection split.
                  "ordinal_smoothing": 0.1, "tta": True, "recall_floor": 0.6,
                  "select_fraction": 0.2},
        "gate": gate or {"accuracy_lower_bound": 0.0,
                         "recall_lower_bounds": [0.0] * 5, "max_accuracy_drop": 1.0},
    })


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> PipelineRun:
    """Generates, ingests and runs the whole pipeline once."""
    from components import ingestion, synthetic
    from pipeline import configs, local_runner

    project = tmp_path_factory.mktemp("project")
    data = project / "data"
    synthetic.generate(data, patients=60, size=128, seed=3)
    params = tiny_params()
    ingestion.ingest(data, project / configs.INGESTED_DIR,
                     eval_fraction=params.data.eval_fraction, seed=params.data.seed)
    record = local_runner.run(params, str(project))
    return PipelineRun(project_dir=project, data_dir=data, record=record, params=params)


# Tests that need the session's real pipeline run (minutes on 2 cores) or the real
# pipeline otherwise are `slow`: the default suite runs them; `pytest -m "not slow"` is the
# quick loop while editing.
_SLOW_FIXTURES = {"pipeline_run"}


def pytest_collection_modifyitems(items):
    for item in items:
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
