"""A small product on bap-engine: every user gets their own engine, and the
product streams the engine's answers back to the browser.

Per request (POST /ask, the user named by the X-User-Id header, which a real
product takes from its own login):

1. admit the user's engine with auto-provision and auto-wake, honouring
   Retry-After within a short deadline (``AsyncClient.engine_for``);
2. call the engine directly (the orchestrator is not in the data path) and
   stream its server-sent events back as plain text as they arrive;
3. turn every denial reason and every error into an answer a person can act
   on (see ``answer_for_denial`` and ``answer_for_error``).

Run it next to ``go run ./cmd/bap-engine dev``::

    BAP_PLATFORM_KEY=pk-sept-... /usr/bin/python3 examples/product/app.py

Environment: BAP_URL (default http://127.0.0.1:8000), BAP_PLATFORM_KEY
(required), PRODUCT_HOST (127.0.0.1), PRODUCT_PORT (8080), ADMIT_DEADLINE_S
(10: how long a user request may wait for its engine).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Dict, Optional

if importlib.util.find_spec("bap_engine_client") is None:
    # Not installed with pip: use the package of this repository.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))

from fastapi import FastAPI, Header
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from bap_engine_client import (
    AdmissionDenied,
    AsyncClient,
    AsyncEngineClient,
    AsyncEventStream,
    AuthenticationError,
    BapEngineError,
    BootTimeoutError,
    CapacityError,
    EngineError,
    InvalidRequestError,
    RateLimitedError,
    TransportError,
    UnavailableError,
)
from bap_engine_client.errors import EngineBusyError

log = logging.getLogger("example-product")


@dataclass(frozen=True)
class UserAnswer:
    """What the product tells its user when there is no engine answer."""

    status: int
    message: str
    retry_after: Optional[int] = None

    def response(self) -> JSONResponse:
        """The answer as JSON, with Retry-After when there is one."""
        headers: Dict[str, str] = {}
        body: Dict[str, object] = {"message": self.message}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
            body["retry_after"] = self.retry_after
        return JSONResponse({"error": body}, status_code=self.status, headers=headers)


def answer_for_denial(reason: str) -> UserAnswer:
    """The user's answer when the engine is not admitted.

    With auto-provision and auto-wake, only ``engine_unhealthy`` (it crashed;
    the orchestrator restarts it by itself) and ``engine_busy`` (it is being
    removed or re-made) can happen; the others are mapped for completeness.
    """
    if reason == "engine_unhealthy":
        return UserAnswer(503, "Your assistant ran into a problem and is being restarted. Please try again in a minute.", 60)
    if reason == "engine_busy":
        return UserAnswer(503, "Your assistant is being updated. Please try again in a few seconds.", 10)
    if reason in ("engine_sleeping", "engine_stopped"):
        return UserAnswer(503, "Your assistant is waking up. Please try again in a few seconds.", 5)
    if reason == "engine_not_found":
        return UserAnswer(503, "Your assistant is being set up. Please try again in a few seconds.", 5)
    return UserAnswer(503, "Your assistant is not available right now. Please try again shortly.", 30)


def answer_for_error(err: BapEngineError) -> UserAnswer:
    """The user's answer for a failure of the orchestrator or the engine.

    The orchestrator's own message is logged, never shown: it speaks to the
    product's developers, not to its users.
    """
    if isinstance(err, AdmissionDenied):
        return answer_for_denial(err.reason)
    if isinstance(err, RateLimitedError):
        wait = max(1, math.ceil(err.retry_after or 1))
        return UserAnswer(429, f"Many people are asking right now. Please try again in {wait} seconds.", wait)
    if isinstance(err, CapacityError):  # QUOTA_EXCEEDED, PORT_EXHAUSTION
        log.warning("no capacity for a new engine: %r", err)
        return UserAnswer(503, "We cannot start a new assistant right now. Please try again later.", 300)
    if isinstance(err, BootTimeoutError):
        return UserAnswer(503, "Your assistant is taking longer than usual to start. Please try again in a minute.", 60)
    if isinstance(err, (UnavailableError, TransportError, EngineBusyError)):
        return UserAnswer(503, "The service is briefly unavailable. Please try again in a few seconds.", 10)
    if isinstance(err, EngineError):
        log.warning("the engine failed: %r", err)
        return UserAnswer(502, "Your assistant could not answer this time. Please try again.")
    if isinstance(err, InvalidRequestError):
        return UserAnswer(400, "This request cannot be served. Check your user name and message.")
    if isinstance(err, AuthenticationError):
        log.error("the product's platform key is refused: %r", err)
    else:
        log.error("unexpected error from bap-engine: %r", err)
    return UserAnswer(500, "Something went wrong on our side. We are looking into it.")


class Question(BaseModel):
    """The body of POST /ask."""

    message: str


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Ask your assistant</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}#out{white-space:pre-wrap;border:1px solid #ccc;padding:1em;min-height:4em}</style>
</head><body>
<h1>Ask your assistant</h1>
<form id="f"><p><label>Your name <input id="user" value="alice" required></label></p>
<p><label>Message <input id="msg" size="40" required></label> <button>Ask</button></p></form>
<div id="out"></div>
<script>
document.getElementById("f").onsubmit = async (ev) => {
  ev.preventDefault();
  const out = document.getElementById("out");
  out.textContent = "";
  const res = await fetch("/ask", {method: "POST",
    headers: {"Content-Type": "application/json", "X-User-Id": document.getElementById("user").value},
    body: JSON.stringify({message: document.getElementById("msg").value})});
  if (!res.ok) { out.textContent = (await res.json()).error.message; return; }
  const reader = res.body.getReader(), text = new TextDecoder();
  for (;;) { const {done, value} = await reader.read(); if (done) break; out.textContent += text.decode(value, {stream: true}); }
};
</script></body></html>
"""


async def _open_answer(bap: AsyncClient, user_id: str, message: str, deadline: float) -> AsyncEventStream:
    """Admit the user's engine and start its streamed answer. A 401 from the
    engine means its key changed since the admit (a rotation): admit once
    more for the current key."""
    for attempt in (1, 2):
        engine: AsyncEngineClient = await bap.engine_for(user_id, deadline=deadline)
        try:
            return await engine.stream({"input": message})
        except EngineError as err:
            if err.status != 401 or attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _tokens(stream: AsyncEventStream) -> AsyncIterator[bytes]:
    """The engine's tokens as they arrive; the reference engine sends
    ``{"token": ...}`` events and then a ``done`` event."""
    try:
        async with stream:
            async for event in stream:
                if event.event == "done":
                    break
                if event.event == "message":
                    yield str(event.json().get("token", "")).encode()
    except (BapEngineError, ValueError) as err:
        # The status line is sent already: say it in the text.
        log.warning("the engine's answer broke off: %r", err)
        yield "\n[The answer was interrupted. Please try again.]".encode()


def create_app(bap_url: str, platform_key: str, admit_deadline: float = 10.0) -> FastAPI:
    """The product's web app, calling the orchestrator at ``bap_url``."""
    app = FastAPI(title="bap-engine example product")
    bap = AsyncClient(bap_url, platform_key=platform_key)

    @app.on_event("shutdown")
    async def close_client() -> None:
        await bap.aclose()

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    @app.post("/ask")
    async def ask(question: Question, x_user_id: str = Header(default="")) -> Response:
        if not x_user_id:
            return UserAnswer(401, "Please sign in first.").response()
        try:
            stream = await _open_answer(bap, x_user_id, question.message, admit_deadline)
        except BapEngineError as err:
            return answer_for_error(err).response()
        return StreamingResponse(_tokens(stream), media_type="text/plain; charset=utf-8")

    return app


def main() -> None:
    """Serve the app with uvicorn, configured from the environment."""
    import uvicorn

    logging.basicConfig(level=logging.INFO)
    key = os.environ.get("BAP_PLATFORM_KEY", "")
    if not key:
        sys.exit("BAP_PLATFORM_KEY is required (bap-engine dev prints the demo product's key)")
    app = create_app(
        os.environ.get("BAP_URL", "http://127.0.0.1:8000"),
        key,
        float(os.environ.get("ADMIT_DEADLINE_S", "10")),
    )
    uvicorn.run(
        app,
        host=os.environ.get("PRODUCT_HOST", "127.0.0.1"),
        port=int(os.environ.get("PRODUCT_PORT", "8080")),
        log_level="warning",
    )


if __name__ == "__main__":
    main()
