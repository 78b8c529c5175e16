"""components/atomic_dir.py: files and folders published in one step."""

import json

import pytest

from components import atomic_dir


def test_update_json_adds_a_key_and_keeps_the_others(tmp_path):
    path = tmp_path / "results" / "probes.json"
    atomic_dir.update_json(str(path), "/models/a", {"accuracy": 0.6})
    atomic_dir.update_json(str(path), "/models/b", {"accuracy": 0.7})
    atomic_dir.update_json(str(path), "/models/a", {"accuracy": 0.65})
    assert json.loads(path.read_text()) == {"/models/a": {"accuracy": 0.65},
                                            "/models/b": {"accuracy": 0.7}}
    assert [p.name for p in path.parent.iterdir()] == ["probes.json"]  # no temporary left


@pytest.mark.parametrize("text, problem", [("[1, 2]", "JSON list, not an object"),
                                           ('{"a": ', "not valid JSON")])
def test_update_json_refuses_a_file_it_would_clobber(tmp_path, text, problem):
    path = tmp_path / "probes.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem):
        atomic_dir.update_json(str(path), "/models/a", {})
    assert path.read_text() == text


def test_replace_dir_swaps_in_the_finished_folder(tmp_path):
    out, tmp = tmp_path / "out", tmp_path / "out.tmp"
    out.mkdir()
    (out / "old.txt").write_text("old")
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    atomic_dir.replace_dir(tmp, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
