"""params.yaml parsing: the repository's file is valid, and bad values are named."""

import pytest

from conftest import REPO
from pipeline import params


def test_the_repository_params_file_is_valid():
    loaded = params.load(str(REPO / "params.yaml"))
    assert loaded.model.image_size % 8 == 0
    assert len(loaded.gate.recall_lower_bounds) == 5


@pytest.mark.parametrize("raw, message", [
    ({"model": {"alpha": 0.35, "image_sise": 64}}, "unknown model settings"),
    ({"gate": {"recall_lower_bounds": [0.1, 0.1]}}, "recall_lower_bounds"),
    ({"gate": {"recall_lower_bounds": [0.1, 0.1, 0.1, 0.1, 1.5]}}, "recall_lower_bounds"),
    ({"data": {"eval_fraction": 1.0}}, "eval_fraction"),
    ({"data": {"path": "x"}}, "unknown setting"),
    ({"run": {"beam_workers": 0}}, "beam_workers"),
    ({"training": {}}, "unknown params section"),
    ({"data": ["not", "a", "mapping"]}, "must be a mapping"),
])
def test_invalid_params_are_named(raw, message):
    with pytest.raises(params.ParamsError, match=message):
        params.parse(raw)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(params.ParamsError, match="not found"):
        params.load(str(tmp_path / "absent.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(params.ParamsError, match="not valid YAML"):
        params.load(str(bad))
