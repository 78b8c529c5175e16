"""`koa up` brings up model server and web UI on a pushed model, and stops both."""

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from koa.processes import free_port


def _children(pid: int):
    result = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                            text=True)
    return [int(p) for p in result.stdout.split()]


def test_up_serves_the_pushed_model_and_stops_everything(pipeline_run, tmp_path):
    grpc, rest, web = free_port(), free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'web.db'}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "koa.cli", "up", "--project-dir",
         str(pipeline_run.project_dir), "--grpc-port", str(grpc), "--rest-port", str(rest),
         "--web-port", str(web)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    lines = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "KOA grading is up" in line:
                break
        assert "KOA grading is up" in lines[-1], "".join(lines[-20:])
        assert "one-time password" in lines[-1]
        children = _children(process.pid)
        assert len(children) == 2

        status = urllib.request.urlopen(f"http://localhost:{rest}/v1/models/koa").read()
        assert pipeline_run.record.pushed_version.encode() in status
        assert b'"AVAILABLE"' in status
        login = urllib.request.urlopen(f"http://localhost:{web}/auth/login")
        assert login.status == 200
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    for child in children:
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://localhost:{web}/auth/login", timeout=2)
