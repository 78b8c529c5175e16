"""Stops a pipeline run when ExampleValidator found anomalies.

ExampleValidator only records anomalies; nothing downstream reads them. This component
fails the run with one line per anomalous feature and split, and the pipeline makes
Transform wait for it, so bad data never reaches training.
"""

import os
from typing import List

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils

_ANOMALIES_FILE = "SchemaDiff.pb"


class DataAnomalyError(RuntimeError):
    """The examples do not match the schema."""


def describe_anomalies(anomalies_uri: str, split_names: List[str]) -> List[str]:
    """Readable "split 'eval', feature 'grade': ..." lines, empty when the data is clean."""
    problems = []
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", _ANOMALIES_FILE)
        with tf.io.gfile.GFile(path, "rb") as f:
            anomalies = anomalies_pb2.Anomalies.FromString(f.read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reason = info.description or info.short_description
            problems.append(f"split '{split}', feature '{feature}': {reason}")
        if anomalies.HasField("dataset_anomaly_info"):
            problems.append(f"split '{split}', whole dataset: "
                            f"{anomalies.dataset_anomaly_info.description}")
    return problems


@tfx.dsl.components.component
def AnomalyGate(anomalies: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.ExampleAnomalies]) -> None:
    """Raises DataAnomalyError listing every anomaly ExampleValidator recorded."""
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    problems = describe_anomalies(anomalies.uri, splits)
    if problems:
        raise DataAnomalyError("data validation failed:\n  " + "\n  ".join(problems))
