"""What one pipeline run produced, read back from ML Metadata.

The local runner writes this record after every run; the DVC report stage, the
benchmark and the tests read it instead of guessing artifact paths.
"""

import dataclasses
import json
from typing import Dict, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2


@dataclasses.dataclass
class RunRecord:
    """Outputs and timings of one pipeline run.

    Attributes:
      run_id: the orchestrator's pipeline run id.
      outputs: "<component>.<output key>" -> URI, e.g. "Evaluator.evaluation".
      blessed: whether the Evaluator blessed the model.
      pushed: whether the model was pushed.
      pushed_version: the version directory, when pushed.
      pushed_destination: full path of the pushed version, when pushed.
      component_seconds: component id -> wall time of its execution.
    """

    run_id: str
    outputs: Dict[str, str]
    blessed: bool
    pushed: bool
    pushed_version: Optional[str]
    pushed_destination: Optional[str]
    component_seconds: Dict[str, float]

    def write(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f, indent=2, sort_keys=True)

    @classmethod
    def read(cls, path: str) -> "RunRecord":
        with open(path, encoding="utf-8") as f:
            return cls(**json.load(f))


def _store(metadata_path: str) -> metadata_store.MetadataStore:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def _custom(node, key):
    value = node.custom_properties.get(key)
    if value is None:
        return None
    return value.string_value or value.int_value


def latest_run(metadata_path: str) -> RunRecord:
    """The most recent pipeline run in the store."""
    store = _store(metadata_path)
    runs = store.get_contexts_by_type("pipeline_run")
    if not runs:
        raise LookupError(f"no pipeline run recorded in {metadata_path}")
    run = max(runs, key=lambda c: c.create_time_since_epoch)

    node_names = {}
    for context in store.get_contexts_by_type("node"):
        node_names[context.id] = context.name.split(".", 1)[-1]
    seconds = {}
    executions = store.get_executions_by_context(run.id)
    types = {t.id: t.name for t in store.get_artifact_types()}
    node_of_execution = {}
    for execution in executions:
        for context in store.get_contexts_by_execution(execution.id):
            if context.id in node_names:
                node_of_execution[execution.id] = node_names[context.id]
    outputs, blessed, pushed, version, destination = {}, False, False, None, None
    output_events = [e for e in store.get_events_by_execution_ids([x.id for x in executions])
                     if e.type == metadata_store_pb2.Event.OUTPUT]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in output_events])}
    for event in output_events:
        artifact = artifacts[event.artifact_id]
        key = event.path.steps[0].key if event.path.steps else types[artifact.type_id]
        outputs[f"{node_of_execution.get(event.execution_id, '?')}.{key}"] = artifact.uri
        name = types[artifact.type_id]
        if name == "ModelBlessing":
            blessed = _custom(artifact, "blessed") == 1
        elif name == "PushedModel":
            pushed = _custom(artifact, "pushed") == 1
            version = _custom(artifact, "pushed_version")
            destination = _custom(artifact, "pushed_destination")
    for execution in executions:
        node = node_of_execution.get(execution.id, str(execution.id))
        seconds[node] = (execution.last_update_time_since_epoch
                         - execution.create_time_since_epoch) / 1000.0
    return RunRecord(run_id=run.name, outputs=outputs, blessed=blessed, pushed=pushed,
                     pushed_version=version, pushed_destination=destination,
                     component_seconds=seconds)
