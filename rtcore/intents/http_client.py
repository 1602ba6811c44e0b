"""Client of the seed's HTTP intent APIs: a main API, and a FAQ API asked when the main one has no answer.

Both take `POST {"sentence": "..."}` and answer JSON with an intent. The main API knows the dialog
answers (ok_zipcode, ok_proprio...); when its intent is missing, empty or "unknown", the FAQ API
(faq1...faq24) is asked the same sentence. Failures never raise: they come back as an
`IntentResult` with intent "unknown" and `error` set to the seed's codes, so the dialog can
re-prompt instead of crashing a call.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Self

import aiohttp

from rtcore.intents.base import API_REQUEST_ERROR, JSON_DECODE_ERROR, REQUEST_TIMEOUT_ERROR, UNKNOWN_ERROR, IntentResult

log = logging.getLogger(__name__)

# Intents that mean "the API did not recognise the sentence": asking the FAQ API is worth it.
_NO_ANSWER = frozenset({"", "unknown", "none", "null", "nlu_fallback", "fallback"})


@dataclass(frozen=True, slots=True)
class HttpIntentOptions:
    """Where the intent APIs are and how long to wait for each answer."""

    main_url: str
    faq_url: str = ""  # empty: no fallback
    timeout_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Any) -> HttpIntentOptions:
        return cls(main_url=settings.intent_main_url, faq_url=settings.intent_faq_url,
                   timeout_s=settings.intent_timeout)


class IntentApiError(Exception):
    """A request that failed; `code` is one of the seed's error codes."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def parse_answer(body: Any) -> IntentResult:
    """The seed API's JSON answer as an IntentResult. Accepts {"intent": "faq3", "score": 0.9},
    a Rasa-like {"intent": {"name": ..., "confidence": ...}}, and "confidence"/"probability" for
    the score; "slots" or "entities" (a mapping) become the slots."""
    if not isinstance(body, dict):
        return IntentResult("unknown", 0.0)
    intent_field = body.get("intent")
    score_field: Any = body.get("score", body.get("confidence", body.get("probability")))
    if isinstance(intent_field, dict):
        score_field = intent_field.get("confidence", score_field)
        intent_field = intent_field.get("name")
    intent = intent_field.strip() if isinstance(intent_field, str) else ""
    try:
        score = min(1.0, max(0.0, float(score_field))) if score_field is not None else (1.0 if intent else 0.0)
    except (TypeError, ValueError):
        score = 0.0
    slots_field = body.get("slots", body.get("entities"))
    slots = dict(slots_field) if isinstance(slots_field, dict) else {}
    return IntentResult(intent or "unknown", score, slots)


def usable(result: IntentResult) -> bool:
    return result.intent.lower() not in _NO_ANSWER


class HttpIntentClient:
    """`async classify(sentence, state)`: main API, then the FAQ API when the main one has no answer.

    The aiohttp session is created on first use in the running event loop; `close()` (or `async
    with`) releases it. The dialog state is not sent: the seed's APIs take the sentence alone.
    """

    def __init__(self, options: HttpIntentOptions, session: aiohttp.ClientSession | None = None) -> None:
        if not options.main_url:
            raise ValueError("intent_main_url is empty: no HTTP intent API to call")
        self.options = options
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.options.timeout_s))
            self._owns_session = True
        return self._session

    async def _post(self, url: str, sentence: str) -> IntentResult:
        timeout = aiohttp.ClientTimeout(total=self.options.timeout_s)
        try:
            async with self._session_now().post(url, json={"sentence": sentence}, timeout=timeout) as response:
                body_text = await response.text()
                if response.status >= 400:
                    raise IntentApiError(API_REQUEST_ERROR, f"{url} answered HTTP {response.status}")
        except TimeoutError as exc:  # asyncio.TimeoutError is TimeoutError since 3.11
            raise IntentApiError(REQUEST_TIMEOUT_ERROR, f"{url}: no answer within {self.options.timeout_s} s") from exc
        except aiohttp.ClientError as exc:
            raise IntentApiError(API_REQUEST_ERROR, f"{url}: {type(exc).__name__}: {exc}") from exc
        try:
            body = json.loads(body_text)
        except json.JSONDecodeError as exc:
            raise IntentApiError(JSON_DECODE_ERROR, f"{url} answered non-JSON: {body_text[:80]!r}") from exc
        return parse_answer(body)

    async def classify(self, sentence: str, state: str | None = None) -> IntentResult:
        url = self.options.main_url
        try:
            result = await self._post(url, sentence)
            if not usable(result) and self.options.faq_url:
                url = self.options.faq_url
                faq_result = await self._post(url, sentence)
                if usable(faq_result):
                    result = faq_result
            if not usable(result):
                result = IntentResult("unknown", result.score, result.slots)
            return result
        except IntentApiError as exc:
            log.warning("intent API call failed (%s): %s", exc.code, exc)
            return IntentResult("unknown", 0.0, {}, error=exc.code)
        except asyncio.CancelledError:
            raise
        except Exception:  # anything else must not take the call down: reported as unknown_error
            log.exception("intent API call to %s failed unexpectedly", url)
            return IntentResult("unknown", 0.0, {}, error=UNKNOWN_ERROR)
