"""Routers as real processes (``python -m rankshard.router``), for tests that SIGKILL or race them."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

from rankshard.cli._local import die_with_parent, free_port


class RouterProcess:
    """One router process. `crash_at` ("STEP" or "STEP:N") makes it SIGKILL itself at that move step; `env` is
    added to its environment (settings as ``RANKSHARD_*`` variables); the sweep settings not given are the
    environment's, else the defaults."""

    def __init__(
        self,
        dsn: str,
        port: int | None = None,
        *,
        crash_at: str | None = None,
        sweep_interval: float | None = None,
        sweep_age_ms: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.dsn = dsn
        self.port = port or free_port()
        self.crash_at = crash_at
        self.flags = [
            *(["--sweep-interval", str(sweep_interval)] if sweep_interval is not None else []),
            *(["--sweep-age-ms", str(sweep_age_ms)] if sweep_age_ms is not None else []),
        ]
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> RouterProcess:
        env = {k: v for k, v in os.environ.items() if k != "RANKSHARD_CRASH_AT"} | self.env
        if self.crash_at:
            env["RANKSHARD_CRASH_AT"] = self.crash_at
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rankshard.router",
                "--control-plane",
                self.dsn,
                "--port",
                str(self.port),
                *self.flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            preexec_fn=die_with_parent,
        )
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                lines.put(line)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if "router listening on" in lines.get(timeout=max(0.0, deadline - time.monotonic())):
                    return self
            except queue.Empty:
                break
        self.kill()
        raise RuntimeError(f"router did not start: {''.join(self.output)}")

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
