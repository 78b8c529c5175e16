"""What is recorded about a model's code and data."""

import json
import subprocess

from pipeline import lineage


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_git_commit_and_dirty_flag(tmp_path):
    assert lineage.git_commit(str(tmp_path)) is None  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("1")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c")
    commit = lineage.git_commit(str(tmp_path))
    assert len(commit) == 40
    (tmp_path / "a.txt").write_text("2")
    assert lineage.git_commit(str(tmp_path)) == commit + "-dirty"


def test_dvc_hash_is_recorded_only_for_the_tracked_folder(tmp_path):
    (tmp_path / "data.dvc").write_text("outs:\n- md5: abc123.dir\n  path: data\n")
    ingested = tmp_path / "ingested"
    ingested.mkdir()
    (ingested / "ingest_report.json").write_text(json.dumps({"content_hash": "f" * 64}))
    tracked = lineage.collect(str(tmp_path), str(ingested), str(tmp_path / "data"),
                              str(tmp_path / "data.dvc"))
    assert tracked["dvc_data_md5"] == "abc123.dir" and tracked["data_hash"] == "f" * 64
    other = lineage.collect(str(tmp_path), str(ingested), str(tmp_path / "elsewhere"),
                            str(tmp_path / "data.dvc"))
    assert other["dvc_data_md5"] is None
