"""Publishing a finished directory or file in one step, so readers never see half of it."""

import json
import os
import shutil
from pathlib import Path


def write_json(path: str, payload) -> None:
    """Writes `payload` as JSON to `path` (creating its folder) through a temporary file
    and one rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def update_json(path: str, key: str, value) -> None:
    """Sets `key` of the JSON object in `path` to `value` and writes it back with
    `write_json`; a missing file starts as an empty object. Other keys are kept, so runs
    on several models can share one results file.

    Raises:
        ValueError: `path` holds invalid JSON or JSON that is not an object.
    """
    results = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            try:
                results = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e}); not overwritten") from e
        if not isinstance(results, dict):
            raise ValueError(f"{path}: holds a JSON {type(results).__name__}, not an object "
                             "keyed by run; not overwritten")
    results[key] = value
    write_json(path, results)


def replace_dir(tmp: Path, out: Path) -> None:
    """Moves the finished `tmp` to `out`, replacing an old `out` with two renames.

    If the second rename fails, the old `out` is put back.
    """
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
