"""What callers said goes through the HTTP service: beyond loopback it needs a token, and a request
without it is refused (rtcore.asr.http_api, Settings)."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY

from rtcore.asr.http_api import HttpServer, bearer_or_basic_token, create_app
from rtcore.runtime.config import ConfigError, load_settings
from tests.test_http_api import _NoAudio

TOKEN = "t0k3n-for-the-test"


def an_address_beyond_loopback() -> str:
    """This machine's address on its default route (no packet is sent); loopback if it has none."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only the routing table is consulted
        return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def test_listening_beyond_loopback_without_a_token_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"http_host 0.0.0.0 is beyond loopback.*set http_token"):
        load_settings(environ={}, cli={"http_host": "0.0.0.0"})
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        load_settings(environ={}, cli={"http_host": host})  # loopback: no token needed
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    s = load_settings(environ={"RTCORE_HTTP_TOKEN_FILE": str(secret)}, cli={"http_host": "0.0.0.0"})
    assert s.http_token.get_secret_value() == TOKEN
    assert TOKEN not in json.dumps(s.redacted())
    assert json.loads(s.to_child_json())["http_token"] == TOKEN  # the child gets it on its stdin


def test_tokens_are_read_from_bearer_and_basic_auth() -> None:
    assert bearer_or_basic_token(f"Bearer {TOKEN}") == TOKEN
    assert bearer_or_basic_token("Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()) == TOKEN
    assert bearer_or_basic_token("Basic !!!not-base64") == ""
    assert bearer_or_basic_token("Digest abc") == "" and bearer_or_basic_token("") == ""


async def test_a_request_without_the_token_is_refused_from_beyond_loopback() -> None:
    settings = load_settings(environ={}, cli={"http_host": "0.0.0.0", "http_token": TOKEN})
    server = HttpServer(create_app(_NoAudio(), settings))  # type: ignore[arg-type]
    port = await server.start("0.0.0.0", 0)
    url = f"http://{an_address_beyond_loopback()}:{port}"

    def answered(endpoint: str, status: int) -> float:
        return REGISTRY.get_sample_value("rtcore_http_requests_total",
                                         {"endpoint": endpoint, "status": str(status)}) or 0.0

    before = {key: answered(*key) for key in (("/health", 401), ("unmatched", 401), ("/health", 200))}
    try:
        async with aiohttp.ClientSession() as session:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"}):
                for method, path in (("GET", "/health"), ("POST", "/embedding_main/"), ("GET", "/missing")):
                    async with session.request(method, url + path, headers=headers,
                                               json={"sentence": "oui"}) as response:
                        assert response.status == 401, (path, headers)
                        assert "http_token" in (await response.json())["error"]
                        assert response.headers["WWW-Authenticate"].startswith("Basic")
            async with session.get(url + "/health", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 200
            async with session.get(url + f"/health?token={TOKEN}") as response:  # what a browser's page can send
                assert response.status == 200
            basic = aiohttp.BasicAuth("ops", TOKEN)
            async with session.post(url + "/embedding_main/", auth=basic,
                                    json={"sentence": "oui", "state": "ask_owner_house"}) as response:
                assert response.status == 200 and (await response.json())["intent"] == "ok_proprio"
        # Counted by route, never by the client's path (a 404's path is anyone's invention).
        assert answered("/health", 401) - before[("/health", 401)] == 3
        assert answered("unmatched", 401) - before[("unmatched", 401)] == 3
        assert answered("/health", 200) - before[("/health", 200)] == 2
    finally:
        await server.close()
