"""Fixtures of the `koa grade` / `koa evaluate` tests: the tiny real SavedModel
(tests/models/tiny_model.py), the project's model server on it (started by the server
tests' own helper), and a few synthetic films."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The server tests' helper module (it starts `python -m serving` on free ports).
sys.path.insert(0, str(REPO / "tests" / "serving"))


@pytest.fixture(scope="session")
def tiny_model_base(tmp_path_factory) -> Path:
    """A model base path ``.../koa`` holding version 1 of the tiny model."""
    import tiny_model

    base = tmp_path_factory.mktemp("grade_models") / "koa"
    base.mkdir()
    tiny_model.build(str(base), 1)
    return base


@pytest.fixture(scope="session")
def grade_server(tiny_model_base, tmp_path_factory) -> str:
    """The project's model server on the tiny model; yields its gRPC ``host:port``."""
    from serving_fixtures import start_server

    process, target, _ = start_server(tmp_path_factory.mktemp("grade_server"), [
        "--model_name=koa", f"--model_base_path={tiny_model_base}"])
    yield target
    process.stop(timeout=20)


@pytest.fixture(scope="session")
def synthetic_films(tmp_path_factory) -> Path:
    """Six synthetic phantom films in ``<grade>/`` folders (3 patients, both knees)."""
    from components import synthetic

    root = tmp_path_factory.mktemp("films") / "data"
    synthetic.generate(root, patients=3, size=64, seed=5)
    return root
