"""Where a model came from: code version and data version, recorded with every push."""

import json
import logging
import os
import subprocess
from typing import Dict, Optional

import yaml

from components import synthetic

logger = logging.getLogger(__name__)


def git_commit(project_dir: str) -> Optional[str]:
    """HEAD's commit, with "-dirty" when tracked files differ from it; None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_dir, check=True,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=project_dir, check=True, capture_output=True,
                               text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        logger.warning("not a git checkout (or no git): the model's code version is unknown")
        return None
    return f"{commit}-dirty" if dirty else commit


def dvc_data_md5(dvc_file: str) -> Optional[str]:
    """The directory hash recorded in a .dvc file, or None when there is no such file."""
    if not os.path.isfile(dvc_file):
        return None
    with open(dvc_file, encoding="utf-8") as f:
        outs = (yaml.safe_load(f) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None


def ingest_data_hash(examples_dir: str) -> Optional[str]:
    """The content hash ingestion computed over the images it imported."""
    path = os.path.join(examples_dir, "ingest_report.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("content_hash")


def collect(project_dir: str, examples_dir: str, data_source: str,
            dvc_file: str) -> Dict[str, Optional[str]]:
    """Lineage recorded in the model card of a pushed model."""
    tracked = os.path.abspath(os.path.splitext(dvc_file)[0])
    uses_tracked = os.path.abspath(data_source) == tracked
    return {
        "git_commit": git_commit(project_dir),
        "data_source": data_source,
        "data_hash": ingest_data_hash(examples_dir),
        # Only meaningful when the run used the directory data.dvc tracks.
        "dvc_data_md5": dvc_data_md5(dvc_file) if uses_tracked else None,
        # The web app tells clinicians in plain words when a model never saw a radiograph.
        "synthetic": synthetic.is_synthetic_set(data_source),
    }
