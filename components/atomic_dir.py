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
