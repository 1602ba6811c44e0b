"""Checks of an Asterisk before rtcore takes calls from it.

`rtcore launch` runs them before it loads any model, so that a bad setting stops it within seconds
with a message saying what to fix, instead of 404s or 401s logged forever:
- `GET /asterisk/info`: the URL reaches Asterisk's ARI (a 404 usually means the `/ari` suffix is
  missing: FACTS.md), the credentials are accepted (401), and the answer is Asterisk's;
- `GET /sounds`: every prompt the dialog script plays is installed where its `sound:` URI finds it,
  in a playable format (rtcore.prompts.check_installed).
An Asterisk that does not answer at all may be still starting: `ari_wait` seconds are allowed for it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from rtcore.dialog.ari.client import AriClient, AriError
from rtcore.dialog.script import DialogScript

log = logging.getLogger(__name__)

RETRY_EVERY_S = 1.0
INSTALL_HINT = "rtcore prompts install --sounds-dir /var/lib/asterisk/sounds"


class PreflightError(RuntimeError):
    """Asterisk cannot be used as configured; the message says what to fix."""


@dataclass(frozen=True)
class AsteriskCheck:
    version: str
    prompts: int
    warnings: list[str] = field(default_factory=list)


async def asterisk_info(url: str, user: str, password: str, timeout_s: float, wait_s: float = 0.0) -> dict[str, Any]:
    """GET <url>/asterisk/info; PreflightError with the fix when it fails."""
    url = url.rstrip("/")
    deadline = time.monotonic() + wait_s
    headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    while True:
        try:
            async with aiohttp.ClientSession(headers=headers) as session:
                async with session.get(f"{url}/asterisk/info",
                                       timeout=aiohttp.ClientTimeout(total=min(timeout_s, 5.0))) as response:
                    body = await response.text()
                    status = response.status
        except (TimeoutError, aiohttp.ClientConnectionError, OSError) as exc:
            if time.monotonic() + RETRY_EVERY_S <= deadline:
                log.info("Asterisk's ARI at %s does not answer yet (%s): waiting", url, _describe(exc))
                await asyncio.sleep(RETRY_EVERY_S)
                continue
            waited = f" (waited {wait_s:g} s)" if wait_s else ""
            raise PreflightError(
                f"cannot reach Asterisk's ARI at {url}{waited}: {_describe(exc)}. Check that Asterisk is running "
                "and that its http.conf has enabled=yes and the bindaddr/bindport of this URL; "
                "--ari-wait S waits for an Asterisk that is still starting") from None
        except aiohttp.InvalidURL:
            raise PreflightError(f"ari_url {url!r} is not a valid URL (e.g. http://127.0.0.1:8088/ari)") from None
        if status == 401:
            raise PreflightError(
                f"Asterisk refused the ARI credentials for user {user!r} (401 at {url}): check ari_user and "
                f"ari_password against ari.conf ([{user}] type=user, password=...)")
        if status == 404:
            if not url.endswith("/ari"):
                raise PreflightError(
                    f"{url}/asterisk/info answered 404: the ARI base URL ends in /ari, "
                    f"e.g. --ari-url {url}/ari")
            raise PreflightError(
                f"{url}/asterisk/info answered 404: is ARI enabled (ari.conf enabled=yes, module res_ari loaded)?")
        if status >= 500 and time.monotonic() + RETRY_EVERY_S <= deadline:
            await asyncio.sleep(RETRY_EVERY_S)
            continue
        if status != 200:
            raise PreflightError(f"{url}/asterisk/info answered {status}: {body[:200]}")
        try:
            info = json.loads(body)
        except ValueError:
            info = None
        if not isinstance(info, dict) or "system" not in info:
            raise PreflightError(f"{url}/asterisk/info did not answer as Asterisk's ARI does: {body[:200]!r}")
        return info


async def check_asterisk(url: str, user: str, password: str, app: str, script: DialogScript,
                         timeout_s: float, wait_s: float = 0.0) -> AsteriskCheck:
    """Reachable, right URL and credentials, and every prompt of `script` installed."""
    from rtcore.dialog.prompts import check_installed

    info = await asterisk_info(url, user, password, timeout_s, wait_s)
    version = str((info.get("system") or {}).get("version", "?"))
    async with AriClient(url, user, password, app, timeout_s) as client:
        try:
            sounds = await client.sounds()
        except AriError as exc:
            raise PreflightError(f"cannot list Asterisk's sounds (GET /sounds): {exc}") from None
    check = check_installed(script, sounds)
    if check.missing:
        names = ", ".join(check.missing)
        raise PreflightError(
            f"Asterisk {version} at {url} lacks {len(check.missing)} of the dialog's {len(script.prompts)} prompts "
            f"in a playable format: {names}. Install them into Asterisk's sounds directory: {INSTALL_HINT} "
            "(run it on the Asterisk host, or copy the rtcore/ folder it writes there)")
    return AsteriskCheck(version, len(script.prompts), list(check.warnings))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer (timed out)"
    return str(exc) or type(exc).__name__
