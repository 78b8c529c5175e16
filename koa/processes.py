"""Child processes of the launcher (and of the tests and benchmarks that start the same
servers): a free port, start with the output in a log file, wait until ready, stop."""

import signal
import socket
import subprocess
import time
from typing import Callable, Mapping, Optional, Sequence


class StartError(RuntimeError):
    """A child process exited or did not become ready; the message says which and why."""


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChildProcess:
    """One started program. Its output goes to `log_path` (or is inherited when None).

    Args:
      what: a name for messages ("model server").
      argv: the command line.
      env: the environment (the parent's when None).
      log_path: file that receives stdout and stderr.
      cwd: working directory.
    """

    def __init__(self, what: str, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
                 log_path: Optional[str] = None, cwd: Optional[str] = None):
        self.what = what
        self.log_path = log_path
        self._terminated = False
        self._log = open(log_path, "wb") if log_path else None  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            list(argv), env=None if env is None else dict(env), cwd=cwd,
            stdout=self._log, stderr=subprocess.STDOUT if self._log else None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """The output so far ("" when it is not captured)."""
        if not self.log_path:
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_until(self, check: Callable[[], bool], timeout: float,
                   interval: float = 0.3) -> None:
        """Polls `check` until it returns true; exceptions from it count as "not yet".

        Raises:
          StartError: the process exited first, or `timeout` seconds passed.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"{self.what} exited with status {self.proc.returncode} "
                                 f"while starting{self._tail()}")
            try:
                if check():
                    return
            except Exception:  # not up yet: connection refused, model still loading
                pass
            time.sleep(interval)
        raise StartError(f"{self.what} did not become ready within {timeout:.0f}s{self._tail()}")

    def terminate(self) -> None:
        """Asks for a graceful shutdown (SIGTERM), once.

        A second SIGTERM could reach the child after its handler finished the shutdown,
        while Python is finalising with the default handlers back, and kill it (−15).
        """
        if self.proc.poll() is None and not self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM unless already sent, then SIGKILL after `timeout` seconds; returns the
        exit status."""
        self.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._log:
            self._log.close()
        return code

    def _tail(self) -> str:
        text = self.log()
        return f":\n{text[-3000:]}" if text else ""
