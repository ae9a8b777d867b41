"""`SimProcess`: the simulator in a child process on a loopback port, a real server for tests, demos and benches."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from types import TracebackType
from typing import IO

import httpx

from cotforge.sim.config import SimConfig


class SimProcess:
    """Start the simulator in a child process; blocks until `/health` answers.

    A start that fails stops the child before raising. Use it as a context manager so the child is
    stopped even when a test fails. `root` is the server's address, `url` the OpenAI base URL.
    """

    def __init__(self, cfg: SimConfig, startup_timeout_s: float = 10.0) -> None:
        self.cfg = cfg if cfg.port else cfg.model_copy(update={"port": free_port(cfg.host)})
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        self.root = f"http://{host}:{self.cfg.port}"
        self.url = f"{self.root}/v1"
        self._output: IO[bytes] | None = tempfile.TemporaryFile()
        self._final_output = ""
        command = [sys.executable, "-m", "cotforge.sim", self.cfg.model_dump_json()]
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._output, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"teacher-sim exited with code {self._process.returncode} before it was ready:\n{self.output()[-4000:]}")
            try:
                if httpx.get(f"{self.root}/health", timeout=0.5, trust_env=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"teacher-sim did not answer {self.root}/health within {timeout_s} s:\n{self.output()[-4000:]}")

    def output(self) -> str:
        """What the server printed, for debugging and for checks that nothing secret is in it."""
        if self._output is None:
            return self._final_output
        self._output.seek(0)
        return self._output.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """Terminate the child by PID, kill it if it is still there after 5 s; safe to call twice."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._output is not None:
            self._final_output = self.output()
            self._output.close()
            self._output = None

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def free_port(host: str) -> int:
    """A port that is free now; the child binds it a moment later (a race only another local binder can lose us)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
