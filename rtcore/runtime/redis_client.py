"""Connections to the shared Redis, built from the settings in one place: URL, ACL user and
password, TLS, Sentinel. Every process that talks to Redis gets its client here, and `rtcore
launch` checks the connection first (check_redis), stopping with what to fix.

The ACL user of the nodes (Redis 6 or later; tests/test_redis_client.py gives a user exactly this
line on a real redis-server 7.0 and runs every command below with it):

    user rtcore on >SECRET resetkeys ~rtcore:* ~bot_speaking resetchannels -@all
        +@read +@write +@stream +@scripting +@transaction -@dangerous +ping +info +select

(one line of the aclfile, or `ACL SETUSER rtcore on >SECRET ...`; then redis_username rtcore and
redis_password SECRET). Keys: every rtcore key is under `rtcore:` (leads, call state, the
cluster's streams and node registry); `bot_speaking` is the seed's global flag, written by a node
that is not in a cluster. Commands: SET GET HSET HGETALL EXPIRE PEXPIRE EXISTS DEL SCAN ZADD ZRANGE
SADD SREM SMEMBERS (@read, @write), XADD XREADGROUP XACK XAUTOCLAIM XCLAIM XPENDING XINFO XDEL XLEN
XRANGE XGROUP (@stream), EVAL EVALSHA SCRIPT LOAD (@scripting), MULTI EXEC (@transaction), PING, INFO
(the server's version) and SELECT (a database other than 0). `-@dangerous` takes back what @read
and @write hold that rtcore never runs (FLUSHALL, FLUSHDB, KEYS, SORT, MIGRATE, RESTORE, SWAPDB...).

With redis_sentinels, the Sentinels are sent the same user, password and TLS options as the master
(a Sentinel with `requirepass SECRET`, and `sentinel auth-pass <master> SECRET` to watch it).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from rtcore.runtime.config import Settings, mask_redis_url, parse_sentinels, redis_url_credentials

ACL_LINE = ("user rtcore on >{password} resetkeys ~rtcore:* ~bot_speaking resetchannels -@all +@read +@write "
            "+@stream +@scripting +@transaction -@dangerous +ping +info +select")
PROBE_TTL_S = 60  # the keys check_redis writes expire by themselves if it is interrupted
NO_RETRY = Retry(NoBackoff(), 0)


class RedisConfigError(RuntimeError):
    """The configured Redis cannot be used: the message says what to fix."""


# --- clients --------------------------------------------------------------------------------
def client_options(settings: Settings, timeout_s: float) -> dict[str, Any]:
    """Keyword arguments common to the sync and asyncio clients (credentials, TLS, timeouts)."""
    options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password.get_secret_value():
        options["password"] = settings.redis_password.get_secret_value()
    if uses_tls(settings):
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True
        if settings.redis_tls_ca_file:
            options["ssl_ca_certs"] = settings.redis_tls_ca_file
        if settings.redis_tls_cert_file:
            options["ssl_certfile"] = settings.redis_tls_cert_file
            options["ssl_keyfile"] = settings.redis_tls_key_file
    return options


def uses_tls(settings: Settings) -> bool:
    return settings.redis_url.startswith("rediss://")


def url_db(url: str) -> int:
    """The database a Redis URL names (/N, or ?db=N for unix://); 0 when none."""
    parts = urlsplit(url)
    query = parse_qs(parts.query).get("db")
    text = query[0] if query else (parts.path.strip("/") if parts.scheme != "unix" else "")
    return int(text) if text.isdigit() else 0


def _sentinel_kwargs(settings: Settings, timeout_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the master's connection options, the Sentinels' connection options)."""
    options = client_options(settings, timeout_s)
    # redis_url's inline user and password, as from_url would read them (the validator allows one
    # password only: inline or redis_password).
    username, password = redis_url_credentials(settings.redis_url)
    if username and "username" not in options:
        options["username"] = username
    if password and "password" not in options:
        options["password"] = password
    if uses_tls(settings):
        options["ssl"] = True
    return {**options, "db": url_db(settings.redis_url)}, options


def sync_client(settings: Settings, *, timeout_s: float = 2.0) -> redis.Redis:
    """A client of the configured Redis: redis_url's, or the master the Sentinels name (a
    fail-over is followed: each new connection asks them)."""
    if settings.redis_sentinels:
        master, sentinels = _sentinel_kwargs(settings, timeout_s)
        manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            parse_sentinels(settings.redis_sentinels), sentinel_kwargs=sentinels, **master)
        client: redis.Redis = manager.master_for(settings.redis_sentinel_master)  # type: ignore[no-untyped-call]
        return client
    return redis.Redis.from_url(settings.redis_url, **client_options(settings, timeout_s))


def async_client(settings: Settings, *, timeout_s: float = 2.0) -> aioredis.Redis:
    """sync_client's asyncio twin."""
    if settings.redis_sentinels:
        master, sentinels = _sentinel_kwargs(settings, timeout_s)
        manager = aiosentinel.Sentinel(  # type: ignore[no-untyped-call]
            parse_sentinels(settings.redis_sentinels), sentinel_kwargs=sentinels, **master)
        client: aioredis.Redis = manager.master_for(settings.redis_sentinel_master)
        return client
    return aioredis.Redis.from_url(settings.redis_url, **client_options(settings, timeout_s))


def async_client_for_url(url: str, *, timeout_s: float = 2.0) -> aioredis.Redis:
    """A client from a URL alone, without the settings' credentials or TLS files: the private
    redis-server's unix socket (and tests)."""
    return aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


# --- for logs -------------------------------------------------------------------------------
def describe(settings: Settings) -> str:
    """Where the Redis is and how we log in, for logs and messages: never the password."""
    if settings.redis_sentinels:
        where = f"Sentinel master {settings.redis_sentinel_master!r} via {settings.redis_sentinels}"
        db = url_db(settings.redis_url)
        where += f", db {db}" if db else ""
    elif settings.redis_url:
        where = mask_redis_url(settings.redis_url)
    else:
        return "the private redis-server of `rtcore launch` (unix socket in run_dir)"
    details = []
    inline_user, inline_password = redis_url_credentials(settings.redis_url)
    if settings.redis_username or (settings.redis_sentinels and inline_user):
        details.append(f"user {settings.redis_username or inline_user}")
    if settings.redis_password.get_secret_value() or (settings.redis_sentinels and inline_password):
        details.append("password set")
    if uses_tls(settings):
        details.append(f"TLS, CA {settings.redis_tls_ca_file or 'of the system'}")
        if settings.redis_tls_cert_file:
            details.append(f"client certificate {settings.redis_tls_cert_file}")
    return where + (f" ({', '.join(details)})" if details else "")


def _endpoint(settings: Settings) -> str:
    """host:port (or the socket) a redis_url connects to, as redis-py reads it."""
    if settings.redis_sentinels:
        return f"master {settings.redis_sentinel_master!r} of the Sentinels {settings.redis_sentinels}"
    parts = urlsplit(settings.redis_url)
    if parts.scheme == "unix":
        return f"unix socket {parts.path}"
    host = parts.hostname or "localhost"
    return f"{'[' + host + ']' if ':' in host else host}:{parts.port or 6379}"


# --- the check at start-up ------------------------------------------------------------------
def check_redis(settings: Settings, timeout_s: float = 5.0) -> str:
    """Connect as the processes will, PING, read the server's version (returned), then run once
    every kind of command rtcore uses on keys of its own (`rtcore:{<cluster>}:check:...`, deleted
    at the end, expiring after PROBE_TTL_S anyway). RedisConfigError says what to fix: the server
    unreachable, the password or ACL user refused, a command or key the ACL user may not use (the
    module docstring has the line to give it), TLS refused either way, no Sentinel reachable or
    the master unknown to them."""
    for name in ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file"):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            raise RedisConfigError(f"{name} {path}: no such file")
    if settings.redis_sentinels:
        where = _find_master(settings, timeout_s)
    else:
        where = _endpoint(settings)
    client = sync_client(settings, timeout_s=timeout_s)
    client.set_retry(NO_RETRY)  # one answer, at once: a refused password is not worth 10 tries
    try:
        return _Probe(client, settings, where).run()
    finally:
        client.close()


def _find_master(settings: Settings, timeout_s: float) -> str:
    """Ask each Sentinel for the master (as redis-py will): its host:port, else RedisConfigError."""
    _master, options = _sentinel_kwargs(settings, timeout_s)
    name = settings.redis_sentinel_master
    problems: list[str] = []
    known: set[str] = set()
    refused = 0
    for host, port in parse_sentinels(settings.redis_sentinels):
        sentinel = redis.Redis(host, port, retry=NO_RETRY, **options)
        try:
            answer = sentinel.sentinel_masters()
        except AuthenticationError as exc:
            refused += 1
            problems.append(f"{host}:{port} refused the credentials ({exc})")
            continue
        except RedisError as exc:
            problems.append(f"{host}:{port}: {_reason(exc)}")
            continue
        finally:
            sentinel.close()
        masters: dict[str, dict[str, Any]] = answer if isinstance(answer, dict) else {}
        known.update(masters)
        state = masters.get(name)
        if state is None:
            continue
        address = f"{state['ip']}:{state['port']}"
        if not state.get("is_master") or state.get("is_sdown") or state.get("is_odown"):
            problems.append(f"{host}:{port} sees master {name!r} at {address} down")
            continue
        return f"{address} (master {name!r} of the Sentinels)"
    sentinels = settings.redis_sentinels
    if known and not problems:
        raise RedisConfigError(f"the Sentinels at {sentinels} know no master named {name!r} (they know: "
                               f"{', '.join(sorted(known))}): set redis_sentinel_master")
    if known or any(" down" in p for p in problems):
        raise RedisConfigError(f"no Sentinel at {sentinels} gives a master {name!r} that is up: {'; '.join(problems)}"
                               + (f" (they know: {', '.join(sorted(known))})" if known - {name} else ""))
    if refused:
        raise RedisConfigError(f"no Sentinel at {sentinels} let us in: {'; '.join(problems)}. The Sentinels are "
                               "sent redis_username / redis_password too: give them the same (requirepass)")
    raise RedisConfigError(f"no Sentinel reachable at {sentinels}: {'; '.join(problems)}. Is redis-sentinel "
                           "running there (redis-server sentinel.conf --sentinel), on those ports?")


class _Probe:
    """Runs each command rtcore uses once, in an order where the first refusal is precise."""

    def __init__(self, client: redis.Redis, settings: Settings, where: str) -> None:
        self.client = client
        self.settings = settings
        self.where = where
        token = f"{settings.node_id}:{os.getpid()}:{time.time_ns()}"
        self.base = f"rtcore:{{{settings.cluster_name}}}:check:{token}"
        self.keys = [f"{self.base}:{kind}" for kind in ("string", "hash", "zset", "set", "stream")]
        node = f"rtcore:node:{settings.node_id}:" if settings.clustered else "rtcore:"
        self.family_keys = [f"rtcore:lead:check:{token}", f"{node}call:check:{token}"]
        self.version = ""

    def run(self) -> str:
        try:
            for label, rule, key, probe in self._probes():
                try:
                    probe()
                except NoPermissionError as exc:
                    raise RedisConfigError(self._no_permission(label, rule, key, exc)) from exc
                except RedisError as exc:
                    raise RedisConfigError(explain(exc, self.settings, self.where)) from exc
        finally:
            try:
                self.client.delete(*self.keys, *self.family_keys)
            except RedisError:
                pass  # they expire
        return self.version

    def _info(self) -> None:
        self.version = str(self.client.info("server").get("redis_version", "unknown"))

    def _probes(self) -> list[tuple[str, str, str, Callable[[], object]]]:
        c = self.client
        s, h, z, st, x = self.keys
        ex = PROBE_TTL_S
        stream_ids: list[Any] = []

        def xadd() -> None:
            entry = c.xadd(x, {"probe": "1"}, maxlen=10)
            stream_ids.append(entry.decode() if isinstance(entry, bytes) else str(entry))
            c.expire(x, ex)

        def script() -> None:
            sha = c.script_load("return redis.call('GET', KEYS[1])")
            c.evalsha(sha, 1, s)

        def transaction() -> None:
            with c.pipeline(transaction=True) as pipe:
                pipe.set(s, "2", ex=ex)
                pipe.pexpire(s, ex * 1000)
                pipe.execute()

        node_calls = self.family_keys[1]
        active = (f"rtcore:node:{self.settings.node_id}:calls:active" if self.settings.clustered
                  else "rtcore:calls:active")
        probes: list[tuple[str, str, str, Callable[[], object]]] = [
            ("PING", "+ping", "", c.ping),
            ("INFO", "+info", "", self._info),
            ("SET", "+@write", s, lambda: c.set(s, "1", ex=ex)),
            ("GET", "+@read", s, lambda: c.get(s)),
            ("EXPIRE", "+@write", s, lambda: c.expire(s, ex)),
            ("EXISTS", "+@read", s, lambda: c.exists(s)),
            ("HSET", "+@write", h, lambda: (c.hset(h, mapping={"probe": "1"}), c.expire(h, ex))),
            ("HGETALL", "+@read", h, lambda: c.hgetall(h)),
            ("ZADD", "+@write", z, lambda: (c.zadd(z, {"probe": 1.0}), c.expire(z, ex))),
            ("ZRANGE", "+@read", z, lambda: c.zrange(z, 0, -1)),
            ("SADD", "+@write", st, lambda: (c.sadd(st, "probe"), c.expire(st, ex))),
            ("SMEMBERS", "+@read", st, lambda: c.smembers(st)),
            ("SREM", "+@write", st, lambda: c.srem(st, "probe")),
            ("SCAN", "+@read", "", lambda: c.scan(0, match=f"{self.base}:*", count=10)),
            ("XADD", "+@stream", x, xadd),
            ("XGROUP CREATE", "+@stream", x, lambda: c.xgroup_create(x, "probe", id="0")),
            ("XREADGROUP", "+@stream", x, lambda: c.xreadgroup("probe", "a", {x: ">"}, count=1)),
            ("XPENDING", "+@stream", x, lambda: (c.xpending(x, "probe"),
                                                  c.xpending_range(x, "probe", "-", "+", 10))),
            ("XCLAIM", "+@stream", x, lambda: c.xclaim(x, "probe", "b", 0, stream_ids)),
            ("XAUTOCLAIM", "+@stream", x, lambda: c.xautoclaim(x, "probe", "a", 0)),
            ("XINFO", "+@stream", x, lambda: (c.xinfo_stream(x), c.xinfo_groups(x), c.xinfo_consumers(x, "probe"))),
            ("XACK", "+@stream", x, lambda: c.xack(x, "probe", *stream_ids)),
            ("XLEN", "+@stream", x, lambda: c.xlen(x)),
            ("XRANGE", "+@stream", x, lambda: c.xrange(x, count=1)),
            ("XDEL", "+@stream", x, lambda: c.xdel(x, *stream_ids)),
            ("EVAL", "+@scripting", s, lambda: c.eval("return redis.call('GET', KEYS[1])", 1, s)),
            ("SCRIPT LOAD / EVALSHA", "+@scripting", s, script),
            ("MULTI / EXEC", "+@transaction", s, transaction),
            ("DEL", "+@write", s, lambda: c.delete(s)),
            # The other families of keys: leads, this node's call state, the seed's flag. No-ops
            # on the keys that hold data (ZADD XX of no member, SREM of none, PERSIST of no TTL).
            ("SET", "+@write", self.family_keys[0], lambda: c.set(self.family_keys[0], "1", ex=ex)),
            ("SET", "+@write", node_calls, lambda: c.set(node_calls, "1", ex=ex)),
            ("ZADD", "+@write", "rtcore:leads", lambda: c.zadd("rtcore:leads", {f"check:{s}": 0.0}, xx=True)),
            ("SREM", "+@write", active, lambda: c.srem(active, f"check:{s}")),
        ]
        if not self.settings.clustered:
            probes.append(("PERSIST", "+@write", "bot_speaking", lambda: c.persist("bot_speaking")))
        return probes

    def _no_permission(self, label: str, rule: str, key: str, exc: NoPermissionError) -> str:
        user = self.settings.redis_username or redis_url_credentials(self.settings.redis_url)[0] or "default"
        line = ACL_LINE.format(password="<its password>")
        text = str(exc)
        command = re.search(r"run the '([^']+)' command", text)
        if command is not None:
            name = command.group(1).upper().replace("|", " ")
            return (f"Redis at {self.where}: ACL user {user!r} may not run {name} (NOPERM), which rtcore uses: "
                    f"add {rule} to the user's ACL; the whole line rtcore needs: {line}")
        pattern = "bot_speaking" if key == "bot_speaking" else "rtcore:*"
        return (f"Redis at {self.where}: ACL user {user!r} may not use the key {key} with {label} (NOPERM: "
                f"{text}): add ~{pattern} to the user's ACL; the whole line rtcore needs: {line}")


# --- what a failure means -------------------------------------------------------------------
def _reason(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".")
    match = re.match(r"Error (-?\d+) connecting to [^ ]+\. (.*)", text)
    return match.group(2) if match else text


def explain(exc: RedisError, settings: Settings, where: str = "") -> str:
    """A Redis client's error as a sentence saying what to fix."""
    where = where or _endpoint(settings)
    text = str(exc)
    code = str(getattr(exc, "status_code", "") or "")
    user = settings.redis_username or redis_url_credentials(settings.redis_url)[0]
    if isinstance(exc, AuthenticationError):
        if code == "WRONGPASS" or "invalid username-password pair" in text:
            who = f"ACL user {user!r}" if user else "the default user"
            return (f"Redis at {where} refused {who} with this password (WRONGPASS: wrong password, no such ACL "
                    "user, or the user is off): set redis_password (or redis_password_file) and redis_username "
                    "to those of an ACL user of that server")
        if "without any password configured" in text:
            return (f"Redis at {where} has no password for the default user, but redis_password is set: leave "
                    "redis_password empty, or give the server a password (requirepass or an ACL user)")
        if code == "NOAUTH" or "Authentication required" in text or "HELLO must be called" in text:
            return (f"Redis at {where} requires a password (NOAUTH): set redis_password (or redis_password_file), "
                    "and redis_username if it is an ACL user's")
        return f"Redis at {where} refused to authenticate us ({text}): check redis_username and redis_password"
    if isinstance(exc, NoPermissionError):
        return (f"Redis at {where}: ACL user {user or 'default'!r} lacks a permission ({text}); the line rtcore "
                f"needs: {ACL_LINE.format(password='<its password>')}")
    if isinstance(exc, ResponseError):
        if code == "READONLY" or text.startswith("You can't write against a read only replica"):
            return (f"Redis at {where} is a read-only replica: point redis_url at the master, or use "
                    "redis_sentinels")
        return f"Redis at {where} answered an error: {text}"
    if isinstance(exc, redis.sentinel.MasterNotFoundError | aiosentinel.MasterNotFoundError):
        return (f"no Sentinel of {settings.redis_sentinels} gives a master {settings.redis_sentinel_master!r} that "
                f"is up ({text}): are the Sentinels running, and is that the master's name (redis_sentinel_master)?")
    tls = uses_tls(settings)
    lowered = text.lower()
    if "certificate verify failed" in lowered:
        if "mismatch" in lowered:
            return (f"TLS: the certificate of Redis at {where} is not issued for that host ({_reason(exc)}): "
                    "connect to it by a name or address the certificate names")
        ca = settings.redis_tls_ca_file or "the system's CA bundle (redis_tls_ca_file is empty)"
        return (f"TLS: cannot verify the certificate of Redis at {where} with {ca} ({_reason(exc)}): set "
                "redis_tls_ca_file to the CA certificate that signed the server's")
    if "certificate required" in lowered:
        return (f"TLS: Redis at {where} requires a client certificate (tls-auth-clients): set redis_tls_cert_file "
                "and redis_tls_key_file")
    if "unknown ca" in lowered or "bad certificate" in lowered:
        return (f"TLS: Redis at {where} refused our client certificate {settings.redis_tls_cert_file or ''} "
                f"({_reason(exc)}): it must be signed by a CA in the server's tls-ca-cert-file")
    if "wrong version number" in lowered or "record layer failure" in lowered:
        return f"TLS: Redis at {where} does not speak TLS on that port: use redis://, or the server's tls-port"
    closed = any(s in lowered for s in ("eof occurred", "reset by peer", "closed by server", "broken pipe"))
    if tls and closed:
        # A server that refuses the client's certificate (or its absence) may close the connection
        # before the client reads its alert: the same cause, seen as an EOF.
        if settings.redis_tls_cert_file:
            return (f"TLS: Redis at {where} closed the connection at once ({_reason(exc)}): it may refuse our "
                    f"client certificate {settings.redis_tls_cert_file}: it must be signed by a CA in the "
                    "server's tls-ca-cert-file")
        return (f"TLS: Redis at {where} closed the connection at once ({_reason(exc)}): if it requires a client "
                "certificate (tls-auth-clients yes), set redis_tls_cert_file and redis_tls_key_file")
    if "ssl" in lowered:
        return f"TLS with Redis at {where} failed ({_reason(exc)}): check redis_tls_* and the server's tls-* files"
    if isinstance(exc, RedisTimeoutError):
        hint = ("a rediss:// URL to a port without TLS waits like this" if tls
                else "a redis:// URL to a TLS port waits like this: use rediss://")
        return (f"no answer from Redis at {where} in time ({_reason(exc)}): is redis-server running there, "
                f"reachable from this host (firewall)? ({hint})")
    if not tls and ("reset by peer" in lowered or "closed by server" in lowered):
        return (f"Redis at {where} closed the connection at once ({_reason(exc)}): if that port speaks TLS "
                "(tls-port), use a rediss:// redis_url")
    return (f"cannot reach Redis at {where} ({_reason(exc)}): is redis-server running there, listening on that "
            "address (bind, protected-mode), reachable from this host?")
