"""Pusher that publishes a blessed model atomically with its model card.

TFX's Pusher copies files straight into `<base>/<version>/`, so a server polling the
base path can see a half-copied version, and it records neither the evaluation nor the
lineage. This component stages the copy in a hidden sibling directory, writes
`assets.extra/model_card.json` (metrics, training history, lineage, decision rule, served
heatmap) and `assets.extra/tf_serving_warmup_requests` (one request TF Serving and our
server replay before the version serves, see `serving/warmup.py`), then renames the
directory into place in one step. Versions are Unix seconds, always increasing.
"""

import datetime
import json
import logging
import os
import time
from typing import Any, Dict, List

from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils

from components import evaluation, export
from components.features import SERVING_INPUT, SERVING_SIGNATURE, model_card_path

logger = logging.getLogger(__name__)

def next_version(base_dir: str) -> int:
    """Current Unix second, or one more than the newest existing version if that is later."""
    names = fileio.listdir(base_dir) if fileio.isdir(base_dir) else []
    existing = [int(name.strip("/")) for name in names if name.strip("/").isdigit()]
    return max([int(time.time())] + [v + 1 for v in existing])


def _remove(path: str) -> None:
    if fileio.exists(path):
        fileio.rmtree(path)



# The warmup film: a gray gradient of a typical radiograph's size (pixels), so the
# first real request finds decoding, resizing and the network already traced.
_WARMUP_FILM_SIDE = 512


def write_warmup_request(export_dir: str, model_name: str) -> bool:
    """Writes the SavedModel's warmup file: one ``serving_default`` PredictRequest.

    The request carries a synthetic gray PNG. It is run once against the
    SavedModel first: a model server fails a version whose warmup request fails,
    so a request the model does not answer is not written (logged instead).

    Args:
        export_dir: the (staged) SavedModel directory.
        model_name: the served model's name, recorded in the request's ModelSpec.

    Returns:
        True when the warmup file was written.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel

    from serving import warmup  # pylint: disable=import-outside-toplevel

    ramp = np.linspace(0, 255, _WARMUP_FILM_SIDE, dtype=np.float32)
    film = ((ramp[:, None] + ramp[None, :]) / 2).astype(np.uint8)[..., None]
    png = tf.io.encode_png(film).numpy()
    try:
        signature = tf.saved_model.load(export_dir).signatures[SERVING_SIGNATURE]
        signature(**{SERVING_INPUT: tf.constant([png])})
    except Exception as e:  # noqa: BLE001 -- whatever fails, the film is no warmup request
        logger.error("no warmup request written: the model does not answer a gray film (%s)", e)
        return False
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = SERVING_SIGNATURE
    request.inputs[SERVING_INPUT].CopyFrom(tf.make_tensor_proto([png], dtype=tf.string))
    warmup.write_warmup_requests(export_dir, [request])
    return True


def _decision(stats: dict) -> dict:
    """How the served grade is computed, for whoever checks it: from the training record."""
    config = stats.get("config", {})
    return {
        "head": config.get("head"),
        "test_time_augmentation": bool(config.get("tta")),
        "grade_offsets": stats.get("grade_offsets"),
        "recall_floor": config.get("recall_floor"),
        "temperature": stats.get("temperature"),
        "ood_threshold": stats.get("ood_threshold"),
    }

def _heatmap(stats: dict) -> dict:
    """Which map the `gradcam` signature serves, from the training record (None for
    models trained before the heatmap became a setting)."""
    config = stats.get("config", {})
    return {"method": config.get("heatmap_method"), "layer": config.get("heatmap_layer")}


class ServingPusherSpec(ComponentSpec):
    """Inputs: model, blessing, evaluation. Parameters: destination and lineage."""

    PARAMETERS = {
        "base_directory": ExecutionParameter(type=str),
        "model_name": ExecutionParameter(type=str),
        # JSON object recorded as the model card's lineage (data hash, git commit, ...).
        "lineage": ExecutionParameter(type=str),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
    }
    OUTPUTS = {"pushed_model": ChannelParameter(type=standard_artifacts.PushedModel)}


class Executor(tfx_pusher_executor.Executor):
    """Stages, annotates and atomically publishes a blessed SavedModel."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        pushed = artifact_utils.get_single_instance(output_dict["pushed_model"])
        evaluation_uri = artifact_utils.get_single_instance(input_dict["evaluation"]).uri
        grade_metrics = evaluation.load_grade_metrics(evaluation_uri)
        if not self.CheckBlessing(input_dict):
            logger.warning("model NOT pushed: the Evaluator did not bless it (%s)",
                           "; ".join(grade_metrics["failures"]) or "no reason recorded")
            self._MarkNotPushed(pushed)
            return

        source = self.GetModelPath(input_dict)
        base = exec_properties["base_directory"]
        fileio.makedirs(base)
        version = next_version(base)
        final = os.path.join(base, str(version))
        staging = os.path.join(base, f".staging-{version}")
        _remove(staging)
        try:
            io_utils.copy_dir(source, staging)
            training = export.read_training_record(source)
            card = {
                "model_name": exec_properties["model_name"],
                "version": version,
                "pushed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"),
                "metrics": {k: v for k, v in grade_metrics.items() if k != "failures"},
                "training_history": training.get("history", {}),
                "decision": _decision(training.get("stats", {})),
                "heatmap": _heatmap(training.get("stats", {})),
                "lineage": {**json.loads(exec_properties["lineage"]),
                            "pipeline_run_id": self._context.pipeline_run_id
                            if self._context else None},
            }
            path = model_card_path(staging)
            fileio.makedirs(os.path.dirname(path))
            with fileio.open(path, "w") as f:
                f.write(json.dumps(card, indent=2))
            write_warmup_request(staging, exec_properties["model_name"])
            # Atomic on a local or POSIX filesystem: a polling server sees all or nothing.
            # (Object stores have no atomic rename; TF Serving tolerates that there.)
            fileio.rename(staging, final)
        finally:
            _remove(staging)
        logger.info("pushed model version %d to %s (accuracy %.4f)", version, final,
                    grade_metrics["accuracy"] or 0.0)
        io_utils.copy_dir(final, pushed.uri)
        self._MarkPushed(pushed, pushed_destination=final, pushed_version=str(version))


class ServingPusher(base_component.BaseComponent):
    """Pushes a blessed model to `<base_directory>/<version>/` with its model card."""

    SPEC_CLASS = ServingPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, model_blessing: types.BaseChannel,
                 evaluation: types.BaseChannel, base_directory: str, model_name: str,
                 lineage: Dict[str, Any]):
        super().__init__(spec=ServingPusherSpec(
            model=model, model_blessing=model_blessing, evaluation=evaluation,
            base_directory=base_directory, model_name=model_name,
            lineage=json.dumps(lineage, sort_keys=True),
            pushed_model=types.Channel(type=standard_artifacts.PushedModel)))
