"""A private redis-server for one run: unix socket in the run directory, append-only file in the
data directory (leads survive restarts), stopped with the run."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import redis

from rtcore.runtime.process import set_parent_death_signal

log = logging.getLogger(__name__)

INSTALL_HINT = ("redis-server is not installed: install the Debian/Ubuntu package 'redis-server' "
                "(apt-get install redis-server), or set redis_url to an existing Redis")


class RedisServerError(RuntimeError):
    pass


def require_redis_server(executable: str = "redis-server") -> str:
    """The path of redis-server; RedisServerError saying what to install when it is missing."""
    exe = shutil.which(executable)
    if exe is None:
        raise RedisServerError(INSTALL_HINT)
    return exe


class PrivateRedis:
    def __init__(self, run_dir: Path, data_dir: Path, executable: str = "redis-server") -> None:
        self.run_dir = Path(run_dir)
        self.data_dir = Path(data_dir)
        self.executable = executable
        self.socket_path = self.run_dir / "redis.sock"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout_s: float = 10.0) -> PrivateRedis:
        exe = require_redis_server(self.executable)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        args = [
            exe, "--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700",
            "--dir", str(self.data_dir), "--appendonly", "yes", "--save", "",
            "--daemonize", "no", "--logfile", str(self.run_dir / "redis.log"),
        ]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=set_parent_death_signal)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=1.0)
        try:
            while True:
                if self._proc.poll() is not None:
                    raise RedisServerError(
                        f"redis-server exited with code {self._proc.returncode}; see {self.run_dir / 'redis.log'}")
                try:
                    if self.socket_path.exists() and client.ping():
                        break
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisServerError(f"redis-server did not answer within {timeout_s:.0f} s")
                # Polling a socket that does not exist yet: there is no event to wait on.
                time.sleep(0.02)
        finally:
            client.close()
        log.info("private redis-server pid %d at %s, data in %s", self._proc.pid, self.url, self.data_dir)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM makes redis-server fsync its append-only file and exit."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.error("redis-server did not stop within %.0f s, killing it", timeout_s)
            self._proc.kill()
            self._proc.wait()
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
