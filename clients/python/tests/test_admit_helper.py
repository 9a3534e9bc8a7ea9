"""The admit helper: Retry-After honoured within the caller's deadline,
transient errors retried with backoff, everything else raised at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, List, Tuple

import httpx
import pytest

import bap_engine_client.client as client_module
from bap_engine_client import (
    AdmissionDenied,
    AsyncClient,
    BapEngineError,
    Client,
    RateLimitedError,
)

from conftest import Orchestrator, Window, destroy_all

ADMITTED = {
    "admitted": True,
    "engine": {
        "engine_id": "e-1",
        "user_id": "u",
        "status": "running",
        "url": "http://127.0.0.1:9001",
        "api_key": "sk-sept-k",
        "engine_version": "img",
        "created_at": "2026-04-27T12:34:56.000Z",
        "last_health_at": None,
    },
}


def error(status: int, code: str, retry_after: str = "") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    return httpx.Response(status, headers=headers, json={"error": {"code": code, "message": code.lower()}})


class Script:
    """A transport that plays answers in order and records the requests."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.requests: List[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, dict):
            return httpx.Response(200, json=answer)
        return answer

    def client(self, **kwargs: Any) -> Client:
        return Client("http://bap.test", platform_key="k", http_client=httpx.Client(transport=httpx.MockTransport(self)), **kwargs)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> List[float]:
    """Records the helper's waits instead of waiting."""
    recorded: List[float] = []
    monkeypatch.setattr(client_module, "_sleep", recorded.append)

    async def no_wait(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(client_module, "_async_sleep", no_wait)
    return recorded


def test_waits_retry_after_when_it_fits_the_deadline(waits: List[float]) -> None:
    script = Script(error(429, "RATE_LIMITED", "3"), ADMITTED)
    hooks: List[Tuple[BapEngineError, float]] = []
    res = script.client().admit_with_retry("u", auto_provision=True, deadline=10, on_retry=lambda e, d: hooks.append((e, d)))
    assert res.admitted and res.engine is not None and res.engine.api_key == "sk-sept-k"
    assert waits == [3.0]
    assert len(hooks) == 1 and isinstance(hooks[0][0], RateLimitedError) and hooks[0][1] == 3.0
    assert len(script.requests) == 2
    assert script.requests[0].read() == b'{"auto_provision": true, "auto_wake": false}'


def test_raises_at_once_when_retry_after_exceeds_the_deadline(waits: List[float]) -> None:
    script = Script(error(429, "RATE_LIMITED", "30"))
    with pytest.raises(RateLimitedError) as info:
        script.client().admit_with_retry("u", deadline=10)
    assert info.value.retry_after == 30.0
    assert waits == [] and len(script.requests) == 1


def test_transient_errors_back_off(waits: List[float]) -> None:
    script = Script(
        error(409, "ENGINE_BUSY"),
        error(503, "DATABASE_UNAVAILABLE"),
        error(503, "BACKEND_UNAVAILABLE"),
        httpx.ConnectError("refused"),
        ADMITTED,
    )
    assert script.client().admit_with_retry("u", deadline=10).admitted
    assert len(waits) == 4
    for attempt, wait in enumerate(waits):
        full = min(0.1 * 2**attempt, 2.0)
        assert full / 2 <= wait <= full, (attempt, wait)


@pytest.mark.parametrize(
    "answer",
    [
        error(429, "QUOTA_EXCEEDED"),
        error(503, "PORT_EXHAUSTION"),
        error(504, "BOOT_TIMEOUT"),
        error(401, "INVALID_PLATFORM_KEY"),
        error(422, "VALIDATION_ERROR"),
        error(500, "INTERNAL"),
    ],
)
def test_other_errors_are_raised_at_once(waits: List[float], answer: httpx.Response) -> None:
    script = Script(answer)
    with pytest.raises(BapEngineError):
        script.client().admit_with_retry("u", deadline=10)
    assert waits == [] and len(script.requests) == 1


def test_each_attempt_is_cut_to_the_time_left(waits: List[float]) -> None:
    script = Script(ADMITTED)
    script.client(timeout=90).admit_with_retry("u", deadline=5)
    timeout: Dict[str, float] = script.requests[0].extensions["timeout"]
    assert 0 < timeout["read"] <= 5


def test_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Script().client().admit_with_retry("u", deadline=0)


def test_engine_for_raises_admission_denied(waits: List[float]) -> None:
    script = Script({"admitted": False, "engine": None, "reason": "engine_unhealthy"})
    with pytest.raises(AdmissionDenied) as info:
        script.client().engine_for("u")
    err = info.value
    assert (err.code, err.reason, err.status) == ("engine_unhealthy", "engine_unhealthy", 200)
    assert script.requests[0].read() == b'{"auto_provision": true, "auto_wake": true}'


def test_async_helper_waits_and_gives_up_alike(waits: List[float]) -> None:
    async def run(script: Script, **kwargs: Any) -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as http:
            return await AsyncClient("http://bap.test", platform_key="k", http_client=http).admit_with_retry("u", **kwargs)

    assert asyncio.run(run(Script(error(429, "RATE_LIMITED", "2"), ADMITTED), deadline=10)).admitted
    assert waits == [2.0]
    with pytest.raises(RateLimitedError):
        asyncio.run(run(Script(error(429, "RATE_LIMITED", "20")), deadline=10))
    assert waits == [2.0]


def test_real_retry_after_beyond_the_deadline_is_raised_at_once(orch: Orchestrator) -> None:
    p = orch.product({"rate_limit_rpm": 1})
    try:
        assert p.client.admit("hana", auto_provision=True).admitted
        began = time.monotonic()
        with pytest.raises(RateLimitedError) as info:
            p.client.admit_with_retry("hana", deadline=5)
        assert time.monotonic() - began < 5, "no wait that cannot end before the deadline"
        assert info.value.retry_after is not None and info.value.retry_after > 5
    finally:
        p.client.destroy("hana")


@pytest.mark.run_last
def test_real_retry_after_is_waited_out(orch: Orchestrator, rate_window: Window) -> None:
    """The product of ``rate_window`` (rate_limit_rpm 1) used its one admit
    of the minute when the session began; this test runs last, so the slot
    frees within the minute. The helper gets a 429, waits its Retry-After
    and is admitted."""
    p, user = rate_window.product, "early"
    if time.monotonic() - rate_window.opened > 55:
        # The session ran long: that window may close before the helper's
        # first attempt. Open a fresh one on a product of its own (this test
        # then waits about a minute).
        p, user = orch.product({"rate_limit_rpm": 1}), "late"
        assert p.client.admit(user, auto_provision=True).admitted
    try:
        retry_after_is_waited_out(p.client, user)
    finally:
        destroy_all(p)


def retry_after_is_waited_out(c: Client, user: str) -> None:
    """``user``'s product has no admit left this minute: the helper gets a
    429, waits its Retry-After and is admitted."""
    retries: List[Tuple[BapEngineError, float]] = []
    began = time.monotonic()
    res = c.admit_with_retry(user, deadline=75, on_retry=lambda e, d: retries.append((e, d)))
    waited = time.monotonic() - began
    assert res.admitted and res.engine is not None and res.engine.user_id == user
    assert len(retries) >= 1
    err, delay = retries[0]
    assert isinstance(err, RateLimitedError) and err.status == 429 and delay == err.retry_after
    assert waited >= delay
