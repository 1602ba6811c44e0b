"""Connections to a shared Redis (rtcore.runtime.redis_client) against real redis-server 7
processes started here on loopback: a password, ACL users (the documented line runs every command
the cluster uses; a user without streams is told what it lacks), TLS with CA verification and
mutual TLS, Sentinel; `rtcore launch` stopping at once on a wrong password."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from rtcore.dialog.leads import Lead, LeadStore, read_leads
from rtcore.runtime.config import ConfigError, Settings, load_settings
from rtcore.runtime.redis_client import (
    ACL_LINE,
    RedisConfigError,
    async_client,
    check_redis,
    describe,
    explain,
    sync_client,
)
from tests.conftest import REPO, free_port

REDIS_SERVER = shutil.which("redis-server")
OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (Debian: redis-server)")

PASSWORD = "s3cret-Pw-81"


class Servers:
    """redis-server processes on loopback ports, each waited for until it accepts connections;
    stop() terminates every one (SIGKILL after 10 s)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, port: int | None = None, tls: bool = False, config: Path | None = None,
              sentinel: bool = False) -> int:
        assert REDIS_SERVER is not None
        port = port or free_port()
        name = f"{'sentinel' if sentinel else 'redis'}-{port}"
        listen = ["--port", "0", "--tls-port", str(port)] if tls else ["--port", str(port)]
        command = [REDIS_SERVER, *([str(config)] if config else []), *listen, "--bind", "127.0.0.1",
                   "--dir", str(self.directory), "--logfile", str(self.directory / f"{name}.log")]
        if not sentinel:
            command += ["--save", "", "--appendonly", "no"]
        command += [*args, *(["--sentinel"] if sentinel else [])]
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        deadline = time.monotonic() + 10.0
        while True:
            if proc.poll() is not None:
                log = (self.directory / f"{name}.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"{name} exited with code {proc.returncode}:\n{log}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return port
            except OSError:
                assert time.monotonic() < deadline, f"{name} does not accept connections"
                time.sleep(0.02)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    running = Servers(tmp_path)
    yield running
    running.stop()


def settings(**values: Any) -> Settings:
    return Settings(instance="t" + uuid.uuid4().hex[:8], **values)


def exercise_cluster_commands(client: redis.Redis, prefix: str) -> None:
    """Every command the nodes run, as they run them (strings, hashes, sets, sorted sets, streams
    with a consumer group, Lua, MULTI/EXEC, SCAN), under `prefix`."""
    s, h, z, st, x = (f"{prefix}{kind}" for kind in ("string", "hash", "zset", "set", "stream"))
    assert client.ping()
    assert client.set(s, "1", ex=60) and client.get(s) == b"1" and client.expire(s, 60) and client.exists(s) == 1
    client.hset(h, mapping={"a": "1", "b": "2"})
    assert client.hgetall(h) == {b"a": b"1", b"b": b"2"}
    client.zadd(z, {"m1": 1.0, "m2": 2.0})
    assert client.zrange(z, 0, -1) == [b"m1", b"m2"]
    client.sadd(st, "c1", "c2")
    client.srem(st, "c1")
    assert client.smembers(st) == {b"c2"}
    assert sorted(client.scan_iter(match=f"{prefix}*", count=100)) == sorted(k.encode() for k in (s, h, z, st))
    client.xgroup_create(x, "asr", id="0", mkstream=True)
    first = client.xadd(x, {"utterance": "u1"})
    second = client.xadd(x, {"utterance": "u2"})
    [[_stream, entries]] = client.xreadgroup("asr", "node-a.0", {x: ">"}, count=2)
    assert [e[0] for e in entries] == [first, second]
    assert client.xpending(x, "asr")["pending"] == 2
    assert len(client.xpending_range(x, "asr", "-", "+", 10)) == 2
    assert [e[0] for e in client.xclaim(x, "asr", "node-b.0", 0, [first])] == [first]
    assert [e[0] for e in client.xautoclaim(x, "asr", "node-b.0", 0)[1]] == [first, second]
    assert client.xinfo_stream(x)["length"] == 2 and client.xinfo_groups(x)[0]["pending"] == 2
    assert {c["name"] for c in client.xinfo_consumers(x, "asr")} == {b"node-a.0", b"node-b.0"}
    assert client.xack(x, "asr", first) == 1 and client.xdel(x, first) == 1
    assert client.xlen(x) == 1 and [e[0] for e in client.xrange(x)] == [second]
    # A script as the gateway's: answer once (SET NX), acknowledge and delete the entry.
    answer = client.register_script(
        "if redis.call('SET', KEYS[1], '1', 'NX', 'EX', 60) then "
        "redis.call('XACK', KEYS[2], 'asr', ARGV[1]); return redis.call('XDEL', KEYS[2], ARGV[1]) end return -1")
    assert answer(keys=[f"{prefix}done:u2", x], args=[second]) == 1  # EVALSHA, SCRIPT LOAD on NOSCRIPT
    assert answer(keys=[f"{prefix}done:u2", x], args=[second]) == -1
    assert client.eval("return redis.call('GET', KEYS[1])", 1, s) == b"1"
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(h)
        pipe.hset(h, mapping={"node": "a"})
        pipe.pexpire(h, 60_000)
        assert pipe.execute() == [1, 1, True]
    assert client.delete(s, h, z, st, x, f"{prefix}done:u2") == 6


# --- passwords, reachability ----------------------------------------------------------------
def test_the_right_password_connects_and_a_wrong_or_missing_one_says_what_to_set(servers: Servers) -> None:
    port = servers.start("--requirepass", PASSWORD)
    url = f"redis://127.0.0.1:{port}/0"
    assert check_redis(settings(redis_url=url, redis_password=PASSWORD)).startswith("7.")
    direct = redis.Redis(port=port, password=PASSWORD)
    assert direct.dbsize() == 0  # the check's own keys are gone
    direct.close()
    with pytest.raises(RedisConfigError) as wrong:
        check_redis(settings(redis_url=url, redis_password="not-the-password"))
    assert str(wrong.value).startswith(f"Redis at 127.0.0.1:{port} refused the default user with this password "
                                       "(WRONGPASS")
    assert "set redis_password (or redis_password_file) and redis_username" in str(wrong.value)
    assert "not-the-password" not in str(wrong.value)
    with pytest.raises(RedisConfigError, match=rf"Redis at 127.0.0.1:{port} requires a password \(NOAUTH\): set "
                                               r"redis_password"):
        check_redis(settings(redis_url=url))
    with pytest.raises(RedisConfigError, match="refused ACL user 'nobody' with this password"):
        check_redis(settings(redis_url=url, redis_username="nobody", redis_password=PASSWORD))
    # The password inline in the URL works the same way.
    assert check_redis(settings(redis_url=f"redis://:{PASSWORD}@127.0.0.1:{port}/0")).startswith("7.")


def test_a_redis_nobody_listens_on_is_named_with_its_address() -> None:
    port = free_port()
    with pytest.raises(RedisConfigError) as info:
        check_redis(settings(redis_url=f"redis://127.0.0.1:{port}"), timeout_s=2.0)
    assert str(info.value) == (f"cannot reach Redis at 127.0.0.1:{port} (Connection refused): is redis-server "
                               "running there, listening on that address (bind, protected-mode), reachable from "
                               "this host?")
    with pytest.raises(RedisConfigError, match=r"^cannot reach Redis at unix socket /nonexistent/redis.sock \(No "
                                               r"such file or directory\)"):
        check_redis(settings(redis_url="unix:///nonexistent/redis.sock"), timeout_s=2.0)


# --- ACL ------------------------------------------------------------------------------------
@pytest.fixture
def acl_server(servers: Servers, tmp_path: Path) -> int:
    line = ACL_LINE.format(password=PASSWORD)
    aclfile = tmp_path / "users.acl"
    aclfile.write_text("\n".join([
        "user default on >admin-pw ~* &* +@all",
        line,
        line.replace("user rtcore ", "user nostream ", 1) + " -@stream",
        line.replace("user rtcore ", "user noseedkey ", 1).replace(" ~bot_speaking", ""),
    ]) + "\n")
    return servers.start("--aclfile", str(aclfile))


async def test_the_documented_acl_line_runs_every_command_of_the_cluster(acl_server: int, tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{acl_server}/1"  # a database other than 0: SELECT
    user = settings(redis_url=url, redis_username="rtcore", redis_password=PASSWORD)
    assert check_redis(user).startswith("7.")
    client = sync_client(user)
    try:
        exercise_cluster_commands(client, "rtcore:{rtcore}:test:")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("elsewhere", "1")  # only rtcore's keys
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()  # -@dangerous
        # The dialog's lead store, on a single box (the seed's bot_speaking) and in a cluster.
        for node in ("", "node-a"):
            store = LeadStore(async_client(user), tmp_path / f"spool{node}.jsonl", node=node)
            store.start()
            store.save_lead(Lead(call_id="c1", caller="0600000001", started_at=1.0, outcome="qualified"))
            store.save_call_state("c1", {"state": "init"})
            store.set_bot_speaking("c1", True)
            assert await store.flush(10.0) and store.written == 6 and store.spooled == 0
            assert [r.call_id for r in await store.load_active_calls()] == ["c1"]
            await store.close()
        assert [(lead.node, lead.call_id) for lead in read_leads(client)] == [("", "c1"), ("node-a", "c1")]
    finally:
        client.close()


def test_an_acl_user_without_streams_is_told_the_permission_it_lacks(acl_server: int) -> None:
    url = f"redis://127.0.0.1:{acl_server}"
    with pytest.raises(RedisConfigError) as info:
        check_redis(settings(redis_url=url, redis_username="nostream", redis_password=PASSWORD))
    assert str(info.value).startswith(f"Redis at 127.0.0.1:{acl_server}: ACL user 'nostream' may not run XADD "
                                      "(NOPERM), which rtcore uses: add +@stream to the user's ACL; the whole line "
                                      "rtcore needs: user rtcore on ><its password> resetkeys ~rtcore:*")
    with pytest.raises(RedisConfigError, match=r"ACL user 'noseedkey' may not use the key bot_speaking with PERSIST "
                                               r"\(NOPERM: .*\): add ~bot_speaking to the user's ACL"):
        check_redis(settings(redis_url=url, redis_username="noseedkey", redis_password=PASSWORD))
    # In a cluster a node writes no seed key: that user is enough there.
    clustered = settings(redis_url=url, redis_username="noseedkey", redis_password=PASSWORD, role="media")
    assert check_redis(clustered).startswith("7.")


# --- TLS ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and an
    unrelated CA (with which a client certificate is also signed)."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed: no certificates for the TLS tests")
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], cwd=d, check=True, capture_output=True, timeout=60)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=rtcore test {ca}",
            "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca, ext in (("server", "ca", ["-extfile", "server.ext"]), ("client", "ca", []),
                          ("stranger", "other-ca", [])):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.crt", *ext)
    return d


def tls_server(servers: Servers, certs: Path, auth_clients: str) -> int:
    try:
        return servers.start("--tls-cert-file", str(certs / "server.crt"), "--tls-key-file", str(certs / "server.key"),
                             "--tls-ca-cert-file", str(certs / "ca.crt"), "--tls-auth-clients", auth_clients,
                             tls=True)
    except AssertionError as exc:
        if "tls" in str(exc).lower() and "not" in str(exc).lower():
            pytest.skip(f"this redis-server has no TLS support: {exc}")
        raise


def test_tls_verifies_the_server_with_the_configured_ca(servers: Servers, certs: Path) -> None:
    port = tls_server(servers, certs, "optional")
    url = f"rediss://127.0.0.1:{port}"
    assert check_redis(settings(redis_url=url, redis_tls_ca_file=str(certs / "ca.crt"))).startswith("7.")
    with pytest.raises(RedisConfigError) as wrong:
        check_redis(settings(redis_url=url, redis_tls_ca_file=str(certs / "other-ca.crt")))
    assert str(wrong.value).startswith(f"TLS: cannot verify the certificate of Redis at 127.0.0.1:{port} with "
                                       f"{certs / 'other-ca.crt'} (")
    assert "certificate verify failed" in str(wrong.value)
    assert str(wrong.value).endswith("set redis_tls_ca_file to the CA certificate that signed the server's")
    with pytest.raises(RedisConfigError, match=r"with the system's CA bundle \(redis_tls_ca_file is empty\)"):
        check_redis(settings(redis_url=url))
    with pytest.raises(RedisConfigError, match=r"closed the connection at once .*use a rediss:// redis_url"):
        check_redis(settings(redis_url=f"redis://127.0.0.1:{port}"))
    with pytest.raises(RedisConfigError, match=r"^redis_tls_ca_file /nonexistent/ca.crt: no such file$"):
        check_redis(settings(redis_url=url, redis_tls_ca_file="/nonexistent/ca.crt"))


async def test_mutual_tls_with_a_client_certificate(servers: Servers, certs: Path, tmp_path: Path) -> None:
    port = tls_server(servers, certs, "yes")
    url = f"rediss://127.0.0.1:{port}/0"
    ca = str(certs / "ca.crt")
    mutual = settings(redis_url=url, redis_tls_ca_file=ca, redis_tls_cert_file=str(certs / "client.crt"),
                      redis_tls_key_file=str(certs / "client.key"))
    assert check_redis(mutual).startswith("7.")
    store = LeadStore(async_client(mutual), tmp_path / "spool.jsonl", node="node-a")  # the asyncio client
    store.start()
    store.save_lead(Lead(call_id="c1", caller="0600000001", started_at=1.0))
    assert await store.flush(10.0) and store.spooled == 0
    await store.close()
    client = sync_client(mutual)
    assert [(lead.node, lead.call_id) for lead in read_leads(client)] == [("node-a", "c1")]
    client.close()
    # The server's alert, or (a race of TLS 1.3: it may close before we read the alert) the EOF.
    with pytest.raises(RedisConfigError, match=rf"^TLS: Redis at 127.0.0.1:{port} (requires a client certificate "
                                               r"\(tls-auth-clients\):|closed the connection at once .*if it requires "
                                               r"a client certificate \(tls-auth-clients yes\),) set "
                                               r"redis_tls_cert_file and redis_tls_key_file$"):
        check_redis(settings(redis_url=url, redis_tls_ca_file=ca))
    eof = redis.ConnectionError("Error 8 while writing to socket. EOF occurred in violation of protocol (_ssl.c:2427)")
    assert explain(eof, settings(redis_url=url, redis_tls_ca_file=ca)) == (
        f"TLS: Redis at 127.0.0.1:{port} closed the connection at once (Error 8 while writing to socket. EOF "
        "occurred in violation of protocol (_ssl.c:2427)): if it requires a client certificate (tls-auth-clients "
        "yes), set redis_tls_cert_file and redis_tls_key_file")
    with pytest.raises(RedisConfigError, match=r"refused?( our)? client certificate .*stranger.crt"
                                               r"( \(.*unknown ca.*\))?: it must be signed by a CA in the server's "
                                               r"tls-ca-cert-file$"):
        check_redis(settings(redis_url=url, redis_tls_ca_file=ca, redis_tls_cert_file=str(certs / "stranger.crt"),
                             redis_tls_key_file=str(certs / "stranger.key")))


# --- Sentinel -------------------------------------------------------------------------------
async def test_sentinel_finds_the_master(servers: Servers, tmp_path: Path) -> None:
    master = servers.start("--requirepass", PASSWORD)
    sentinel_port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"sentinel monitor mymaster 127.0.0.1 {master} 1\nsentinel auth-pass mymaster {PASSWORD}\n"
                    f"requirepass {PASSWORD}\n")
    servers.start(port=sentinel_port, config=conf, sentinel=True)
    via = settings(redis_sentinels=f"127.0.0.1:{sentinel_port}", redis_password=PASSWORD, redis_url="redis:///2")
    assert describe(via) == f"Sentinel master 'mymaster' via 127.0.0.1:{sentinel_port}, db 2 (password set)"
    assert check_redis(via).startswith("7.")
    client = sync_client(via)
    client.set("rtcore:probe", "via-sentinel")
    client.close()
    aclient = async_client(via)
    assert await aclient.get("rtcore:probe") == b"via-sentinel"
    await aclient.aclose()
    direct = redis.Redis(port=master, password=PASSWORD, db=2)
    assert direct.get("rtcore:probe") == b"via-sentinel"  # the master, database 2
    direct.close()
    with pytest.raises(RedisConfigError, match=rf"^the Sentinels at 127.0.0.1:{sentinel_port} know no master named "
                                               r"'elsewhere' \(they know: mymaster\): set redis_sentinel_master$"):
        check_redis(via.model_copy(update={"redis_sentinel_master": "elsewhere"}))
    with pytest.raises(RedisConfigError, match=r"no Sentinel at .* let us in: .*refused the credentials"):
        check_redis(via.model_copy(update={"redis_password": SecretStr("wrong")}))
    nobody = free_port()
    with pytest.raises(RedisConfigError, match=rf"^no Sentinel reachable at 127.0.0.1:{nobody}: 127.0.0.1:{nobody}: "
                                               r"Connection refused\. Is redis-sentinel running there"):
        check_redis(via.model_copy(update={"redis_sentinels": f"127.0.0.1:{nobody}"}), timeout_s=2.0)


# --- what the settings accept, what the logs show -------------------------------------------
def test_describe_never_shows_the_password() -> None:
    inline = settings(redis_url="redis://rtcore:hunter2-pw@db.example:6379/0")
    assert describe(inline) == "redis://rtcore:***@db.example:6379/0"
    assert describe(settings(redis_url="unix:///run/redis.sock?db=3&password=hunter2-pw")) == (
        "unix:///run/redis.sock?db=3&password=***")
    separate = settings(redis_url="rediss://db.example:6380/1", redis_username="rtcore", redis_password="hunter2-pw",
                        redis_tls_ca_file="/etc/rtcore/ca.crt")
    assert describe(separate) == ("rediss://db.example:6380/1 (user rtcore, password set, TLS, CA "
                                  "/etc/rtcore/ca.crt)")
    assert "hunter2" not in describe(settings(redis_url="redis://hunter2-pw@db.example"))


def test_conflicting_redis_settings_are_refused_with_what_to_change() -> None:
    with pytest.raises(ConfigError, match=r"redis_url carries a password .* and redis_password is set too: keep one"):
        load_settings(environ={}, cli={"redis_url": "redis://:a@db", "redis_password": "b"})
    with pytest.raises(ConfigError, match=r"redis_tls_ca_file is for TLS: redis_url must start with rediss:// "
                                          r"\(it is a redis:// URL\)"):
        load_settings(environ={}, cli={"redis_url": "redis://db", "redis_tls_ca_file": "/ca.crt"})
    with pytest.raises(ConfigError, match=r"redis_tls_cert_file and redis_tls_key_file are for TLS: .*unix://"):
        load_settings(environ={}, cli={"redis_url": "unix:///r.sock", "redis_tls_cert_file": "/c",
                                       "redis_tls_key_file": "/k"})
    with pytest.raises(ConfigError, match=r"redis_sentinels: Value error, 'db' is not host:port"):
        load_settings(environ={}, cli={"redis_sentinels": "10.0.0.7:26379,db"})
    with pytest.raises(ConfigError, match="the private redis-server `rtcore launch` starts takes no password"):
        load_settings(environ={}, cli={"redis_password": "b"})


# --- rtcore launch --------------------------------------------------------------------------
def test_launch_stops_at_once_on_a_wrong_redis_password(servers: Servers, short_dir: Path) -> None:
    port = servers.start("--requirepass", PASSWORD)
    started = time.monotonic()
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "rtcore"), "launch", "--redis-url", f"redis://127.0.0.1:{port}",
         "--redis-password", "bad-Pw-77", "--run-dir", str(short_dir / "run"), "--data-dir", str(short_dir / "data"),
         "--instance", "t" + uuid.uuid4().hex[:8], "--metrics-port", "0", "--duration", "5"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert elapsed < 20.0
    assert f"Redis at 127.0.0.1:{port} refused the default user with this password (WRONGPASS" in output
    assert "Traceback" not in output and "bad-Pw-77" not in output
    assert "audio rings" not in output  # stopped before the supervisor started anything
