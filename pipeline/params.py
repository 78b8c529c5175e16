"""Reads and checks params.yaml: the settings DVC tracks and experiments vary."""

import dataclasses
import json
import os
from typing import Dict, List

import yaml

from components import features
from components.model_config import ModelConfig


class ParamsError(ValueError):
    """params.yaml is missing, malformed or has an invalid value."""


@dataclasses.dataclass(frozen=True)
class DataParams:
    """Where the dataset comes from and how the validation split is carved."""

    source: str = "data"
    manifest: str = ""
    # A <grade>/ folder that is the eval split as given (a dataset's own validation
    # split); empty: eval is carved from `source` by patient (`eval_fraction`).
    eval_source: str = ""
    eval_fraction: float = 0.2
    seed: int = 42


@dataclasses.dataclass(frozen=True)
class GateParams:
    """Evaluator thresholds: a model that misses any of them is not pushed."""

    accuracy_lower_bound: float = 0.0
    recall_lower_bounds: List[float] = dataclasses.field(
        default_factory=lambda: [0.0] * features.NUM_GRADES)
    max_accuracy_drop: float = 0.0
    # Calibration: the probabilities clinicians read must mean what they say (1.0 = off).
    ece_upper_bound: float = 1.0


@dataclasses.dataclass(frozen=True)
class RunParams:
    """How the local run executes."""

    beam_workers: int = 1  # DirectRunner workers; >1 runs Beam in several processes
    # Search hyper-parameters with TFX's Tuner before the Trainer (`koa run --tune` does the
    # same): a params setting, so a tuned run can be a DVC experiment (`-S run.tune=true`).
    tune: bool = False


@dataclasses.dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    data: DataParams
    model: ModelConfig
    gate: GateParams
    run: RunParams


def _section(cls, values, name):
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ParamsError(f"params section '{name}' must be a mapping")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ParamsError(f"unknown setting(s) in '{name}': {unknown}; known: {sorted(known)}")
    return cls(**values)


def _is_fraction(value) -> bool:
    """A number (not a bool) in [0, 1]."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0.0 <= value <= 1.0)


def parse(raw: dict) -> Params:
    """Params from an already-loaded mapping, with every value checked."""
    if not isinstance(raw, dict):
        raise ParamsError("params must be a mapping of sections")
    unknown = sorted(set(raw) - {"data", "model", "gate", "run"})
    if unknown:
        raise ParamsError(f"unknown params section(s): {unknown}")
    try:
        model = ModelConfig.from_dict(raw.get("model") or {})
    except (TypeError, ValueError) as e:
        raise ParamsError(f"invalid 'model' params: {e}") from e
    params = Params(
        data=_section(DataParams, raw.get("data"), "data"),
        model=model,
        gate=_section(GateParams, raw.get("gate"), "gate"),
        run=_section(RunParams, raw.get("run"), "run"),
    )
    if not 0.0 < params.data.eval_fraction < 1.0:
        raise ParamsError(f"data.eval_fraction must be in (0, 1), got {params.data.eval_fraction}")
    bounds = params.gate.recall_lower_bounds
    if not isinstance(bounds, (list, tuple)) or len(bounds) != features.NUM_GRADES \
            or not all(map(_is_fraction, bounds)):
        raise ParamsError(f"gate.recall_lower_bounds needs {features.NUM_GRADES} values in "
                          f"[0, 1], got {bounds}")
    for name in ("accuracy_lower_bound", "max_accuracy_drop", "ece_upper_bound"):
        value = getattr(params.gate, name)
        if not _is_fraction(value):
            raise ParamsError(f"gate.{name} must be a number in [0, 1], got {value!r}")
    if params.run.beam_workers < 1:
        raise ParamsError(f"run.beam_workers must be >= 1, got {params.run.beam_workers}")
    if not isinstance(params.run.tune, bool):
        raise ParamsError(f"run.tune must be true or false, got {params.run.tune!r}")
    return params


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except FileNotFoundError as e:
        raise ParamsError(f"params file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ParamsError(f"params file {path} is not valid YAML: {e}") from e


def load(path: str) -> Params:
    """Params from a YAML file."""
    return parse(_read(path))


def _leaves(values: Dict, prefix: str = "") -> Dict[str, object]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Settings that name files or folders; "none" and "imagenet" are weights choices, not paths.
_PATH_SETTINGS = ("data.source", "data.manifest", "data.eval_source", "model.weights")
_NOT_PATHS = ("", "none", "imagenet")


def set_args(path: str, base_path: str, absolute_paths: bool = False) -> List[str]:
    """`dvc exp run` arguments (`-S key=value`, one pair per setting) that turn the params
    in `base_path` into those of `path`: only the settings that differ.

    Both files are checked first. Values are written so that the shell can split the
    arguments on whitespace: a value containing whitespace is refused.

    With `absolute_paths`, relative data and weights paths are made absolute (relative to
    the folder of `path`), as `dvc exp run --queue/--temp` needs for files outside the
    repository: those runs happen in a copy of it under .dvc/tmp/exps/, where a path like
    ../shared/... points elsewhere (DVC's own advice, treeverse/dvc#8747).
    """
    target, base = _read(path), _read(base_path)
    parse(target)
    parse(base)
    base_leaves = _leaves(base)
    folder = os.path.dirname(os.path.abspath(path))
    args = []
    for key, value in _leaves(target).items():
        if (absolute_paths and key in _PATH_SETTINGS and isinstance(value, str)
                and value not in _NOT_PATHS and not os.path.isabs(value)):
            value = os.path.normpath(os.path.join(folder, value))
        if key in base_leaves and base_leaves[key] == value:
            continue
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        if not text or any(c.isspace() for c in text):
            raise ParamsError(f"{path}: {key} = {value!r} cannot be passed as one shell word")
        args += ["-S", f"{key}={text}"]
    return args
