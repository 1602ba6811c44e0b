from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from rtcore.runtime.redis_server import PrivateRedis, RedisServerError
from tests.conftest import REPO


def test_private_redis_persists_across_restarts(short_dir: Path) -> None:
    server = PrivateRedis(short_dir / "run", short_dir / "data")
    with server:
        client = redis.Redis.from_url(server.url)
        client.hset("lead:c1", mapping={"zip_code": "75011", "outcome": "qualified"})
        client.close()
    assert not server.socket_path.exists()
    assert any((short_dir / "data").rglob("*.aof"))
    with PrivateRedis(short_dir / "run", short_dir / "data") as again:
        client = redis.Redis.from_url(again.url, decode_responses=True)
        assert client.hgetall("lead:c1") == {"zip_code": "75011", "outcome": "qualified"}
        client.close()


def test_missing_redis_server_names_the_package(short_dir: Path) -> None:
    with pytest.raises(RedisServerError, match=r"install the Debian/Ubuntu package 'redis-server'"):
        PrivateRedis(short_dir, short_dir, executable="redis-server-not-installed").start()


def test_launch_without_redis_server_says_what_to_install(short_dir: Path) -> None:
    bindir = Path(sys.executable).parent  # python only: redis-server is not on this PATH
    env = {**os.environ, "PATH": str(bindir), "RTCORE_RUN_DIR": str(short_dir / "run"),
           "RTCORE_DATA_DIR": str(short_dir / "data"), "RTCORE_INSTANCE": "noredis", "RTCORE_METRICS_PORT": "0",
           # Checked first, before the Asterisk (unreachable here) and before any model.
           "RTCORE_ARI_URL": "http://127.0.0.1:1/ari"}
    proc = subprocess.run([sys.executable, "-m", "rtcore.cli", "launch", "--duration", "1"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "apt-get install redis-server" in proc.stderr
    assert not any(n.startswith("rtcore.noredis.") for n in os.listdir("/dev/shm"))


def test_redis_that_exits_at_start_is_reported(short_dir: Path) -> None:
    # `false` stands in for a redis-server that dies at once (bad config, port clash, ...).
    with pytest.raises(RedisServerError, match=r"redis-server exited with code 1; see .*redis.log"):
        PrivateRedis(short_dir / "run", short_dir / "data", executable="false").start()
