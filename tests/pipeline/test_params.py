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
    ({"gate": {"ece_upper_bound": 1.5}}, "gate.ece_upper_bound"),
    ({"gate": {"ece_upper_bound": "low"}}, "gate.ece_upper_bound"),
    ({"gate": {"accuracy_lower_bound": -0.1}}, "gate.accuracy_lower_bound"),
    ({"gate": {"max_accuracy_drop": True}}, "gate.max_accuracy_drop"),
    ({"data": {"eval_fraction": 1.0}}, "eval_fraction"),
    ({"data": {"path": "x"}}, "unknown setting"),
    ({"run": {"beam_workers": 0}}, "beam_workers"),
    ({"run": {"tune": "yes please"}}, "run.tune"),
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


def test_the_real_data_params_file_is_valid_and_differs_from_the_demo():
    real = params.load(str(REPO / "params.kneeKL224.yaml"))
    demo = params.load(str(REPO / "params.yaml"))
    assert real.model.image_size == 224 and real.data.source.endswith("kneeKL224")
    # Its gate is meant to stop regressions of a real model, so it is not the demo's.
    assert real.gate != demo.gate


def _params_file(folder, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def test_set_args_turn_one_params_file_into_another(tmp_path):
    base = _params_file(tmp_path, "base.yaml", "model: {image_size: 64, head: softmax}\n"
                        "gate: {recall_lower_bounds: [0, 0, 0, 0, 0]}\n")
    target = _params_file(tmp_path, "target.yaml", "model: {image_size: 224, head: softmax, "
                          "tta: true}\ngate: {recall_lower_bounds: [0.5, 0.25, 0.5, 0.5, 0.75]}\n")
    assert params.set_args(target, base) == [
        "-S", "model.image_size=224", "-S", "model.tta=true",
        "-S", "gate.recall_lower_bounds=[0.5,0.25,0.5,0.5,0.75]"]
    assert params.set_args(base, base) == []


def test_set_args_refuse_invalid_params_and_unsplittable_values(tmp_path):
    base = _params_file(tmp_path, "base.yaml", "model: {image_size: 64}\n")
    bad = _params_file(tmp_path, "bad.yaml", "model: {image_size: 100}\n")
    with pytest.raises(params.ParamsError, match="multiple of 8"):
        params.set_args(bad, base)
    spaced = _params_file(tmp_path, "spaced.yaml", "data: {source: 'my films'}\n")
    with pytest.raises(params.ParamsError, match="one shell word"):
        params.set_args(spaced, base)


def test_set_args_can_make_data_paths_absolute_for_queued_experiments(tmp_path):
    base = _params_file(tmp_path, "base.yaml", "data: {source: data}\nmodel: {weights: none}\n")
    target = _params_file(tmp_path, "target.yaml", "data: {source: ../shared/films, "
                          "eval_source: /abs/val}\nmodel: {weights: ../w.h5}\n")
    assert params.set_args(target, base) == [
        "-S", "data.source=../shared/films", "-S", "data.eval_source=/abs/val",
        "-S", "model.weights=../w.h5"]
    assert params.set_args(target, base, absolute_paths=True) == [
        "-S", f"data.source={tmp_path.parent / 'shared' / 'films'}",
        "-S", "data.eval_source=/abs/val", "-S", f"model.weights={tmp_path.parent / 'w.h5'}"]
