"""The `koa` command line as a user runs it: exit codes, messages, files written."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


REPO = Path(__file__).resolve().parents[2]


def _koa(*args, cwd):
    return subprocess.run([sys.executable, "-m", "koa.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_generate_then_ingest_with_the_repository_params(tmp_path):
    generated = _koa("generate-synthetic", "--out", "data", "--patients", "10", "--size", "64",
                     cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert "SYNTHETIC" in generated.stderr
    ingested = _koa("ingest", "--params", str(REPO / "params.yaml"), cwd=tmp_path)
    assert ingested.returncode == 0, ingested.stderr
    with open(tmp_path / "build" / "ingested" / "ingest_report.json") as f:
        assert sum(sum(c.values()) for c in json.load(f)["counts"].values()) == 20


def test_ingest_of_a_missing_folder_fails_with_one_clear_line(tmp_path):
    result = _koa("ingest", "--params", str(REPO / "params.yaml"), "--source", "nowhere",
                  cwd=tmp_path)
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "build" / "ingested").exists()


def test_kubeflow_v2_compile_writes_a_pipeline_spec(tmp_path):
    output = tmp_path / "spec.json"
    result = _koa("compile-kfp", "--params", str(REPO / "params.yaml"), "--output",
                  str(output), "--image", "registry.example/koa:1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    spec = json.loads(output.read_text())
    pipeline_spec = spec.get("pipelineSpec", spec)
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    assert {"ImportExampleGen", "Transform", "Trainer", "Evaluator", "ServingPusher"} <= set(tasks)
    images = {e["container"]["image"] for e in pipeline_spec["deploymentSpec"]["executors"].values()
              if "container" in e}
    assert images == {"registry.example/koa:1"}


def test_dvc_stages_are_valid(tmp_path):
    dvc = os.path.join(os.path.dirname(sys.executable), "dvc")
    result = subprocess.run([dvc, "dag", "--md"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for stage in ("ingest", "pipeline", "report"):
        assert stage in result.stdout


def test_dvc_stages_run_the_code_of_the_directory_they_run_in(tmp_path):
    # Queued and temporary experiments run their stages in a copy of the repository
    # (.dvc/tmp/exps/...): the commands must import that copy, not the installed checkout,
    # or an edit made while a run waits in the queue would change what it trains.
    copy = tmp_path / "exp"
    for package in ("components", "koa"):
        shutil.copytree(REPO / package, copy / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    # In the copy, `koa.cli` only says which `components` it imported.
    (copy / "koa" / "cli.py").write_text(
        "import sys\nimport components\n"
        "if __name__ == '__main__':\n    print(components.__file__)\n    sys.exit(0)\n")
    with open(REPO / "dvc.yaml") as f:
        stages = yaml.safe_load(f)["stages"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    for name, stage in stages.items():
        result = subprocess.run(stage["cmd"], shell=True, cwd=copy, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"stage {name}: {result.stderr[-2000:]}"
        assert result.stdout.strip() == str(copy / "components" / "__init__.py"), name


def test_exp_args_print_what_dvc_exp_run_needs(tmp_path):
    result = _koa("exp-args", "params.kneeKL224.yaml", cwd=REPO)
    assert result.returncode == 0, result.stderr
    args = result.stdout.split()
    assert args[0] == "-S" and "data.source=../shared/data/kneeKL224" in args
    missing = _koa("exp-args", str(tmp_path / "absent.yaml"), cwd=REPO)
    assert missing.returncode == 2 and "absent.yaml" in missing.stderr
    assert "Traceback" not in missing.stderr and missing.stdout == ""


def test_serve_and_web_are_subcommands_that_own_their_flags(tmp_path):
    web = _koa("web", "--help", cwd=tmp_path)
    assert web.returncode == 0, web.stderr
    assert web.stdout.startswith("usage: koa web")
    serve = _koa("serve", "--port=notanumber", "--model_base_path=/nowhere", cwd=tmp_path)
    assert serve.returncode != 0
    assert "--port" in serve.stdout + serve.stderr
    listed = _koa("--help", cwd=tmp_path)
    assert "serve" in listed.stdout and "web" in listed.stdout
    unknown = _koa("report", "--no-such-flag", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in unknown.stderr


def test_run_tune_in_params_puts_the_tuner_in_the_run(tmp_path, monkeypatch):
    from koa import cli
    from pipeline import local_runner

    calls = []

    class _Record:
        pushed = True

    def run(params, project_dir):
        calls.append(params.run.tune)
        return _Record()

    monkeypatch.setattr(local_runner, "run", run)
    for tune in ("false", "true"):
        params = tmp_path / f"params_{tune}.yaml"
        params.write_text((REPO / "params.yaml").read_text().replace("tune: false", f"tune: {tune}"))
        assert cli.main(["run", "--params", str(params)]) == 0
    assert cli.main(["run", "--tune", "--params", str(tmp_path / "params_false.yaml")]) == 0
    assert calls == [False, True, True]
