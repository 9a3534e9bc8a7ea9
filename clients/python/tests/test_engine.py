"""The engine helpers: /execute with the engine key, and its server-sent
events streamed from the reference engine."""

from __future__ import annotations

import asyncio
import json
from typing import List

import httpx
import pytest

from bap_engine_client import (
    AsyncClient,
    AsyncEngineClient,
    EngineClient,
    EngineError,
    ServerSentEvent,
    SSEDecoder,
    TransportError,
)

from conftest import Orchestrator, Product, free_port


def tokens(events: List[ServerSentEvent]) -> str:
    return "".join(e.json()["token"] for e in events if e.event == "message")


def test_stream_from_the_reference_engine(product: Product) -> None:
    engine = product.client.engine_for("ivy")
    events = list(engine.stream({"input": "tell me a story"}))
    # One event per word of the answer, then "done".
    assert [e.event for e in events] == ["message"] * 6 + ["done"]
    assert tokens(events) == "Noted #1: tell me a story"
    assert events[-1].json() == {"output": "Noted #1: tell me a story", "counter": 1}

    # A string payload is {"input": ...}; an early exit closes the stream.
    with engine.stream("again") as stream:
        first = next(iter(stream))
        assert first.json() == {"token": "Noted "}
    assert stream.response.is_closed
    # The engine remembered both exchanges in its brain.
    assert engine.execute("third")["counter"] == 3


def test_streamed_tokens_arrive_as_the_engine_sends_them(product: Product) -> None:
    """With 200 ms between tokens, the first event is handed over long
    before the engine has sent the rest: nothing buffers the whole answer."""
    engine = product.client.engine_for("jack")
    stream = engine.stream({"input": "a b c d e f g h", "delay_ms": 200})
    seen: List[ServerSentEvent] = []
    at_first = 0
    for event in stream:
        seen.append(event)
        if len(seen) == 1:
            at_first = stream.response.num_bytes_downloaded
    assert tokens(seen) == "Noted #1: a b c d e f g h"
    assert 0 < at_first < stream.response.num_bytes_downloaded / 2


def test_async_stream_from_the_reference_engine(orch: Orchestrator, product: Product) -> None:
    key = product.client.platform_key

    async def scenario() -> List[ServerSentEvent]:
        async with AsyncClient(orch.url, platform_key=key) as c:
            engine = await c.engine_for("kate")
            stream = await engine.stream({"input": "async hello"})
            async with stream:
                events = [e async for e in stream]
            # A standalone engine client (own connection pool) works alike.
            info = (await c.admit("kate")).engine
            assert info is not None
            async with AsyncEngineClient.from_engine(info) as own:
                assert (await own.execute("x"))["counter"] == 2
            return events

    events = asyncio.run(scenario())
    assert tokens(events) == "Noted #1: async hello"
    assert events[-1].event == "done"


def test_engine_errors(product: Product) -> None:
    info = product.client.admit("liam", auto_provision=True).engine
    assert info is not None and info.api_key
    with EngineClient(info.url, "sk-sept-wrong") as wrong:
        with pytest.raises(EngineError) as err:
            wrong.execute("hi")
        assert (err.value.status, err.value.code) == (401, "INVALID_ENGINE_KEY")
        with pytest.raises(EngineError) as err:
            wrong.stream("hi")
        assert err.value.status == 401
    with EngineClient.from_engine(info) as engine:
        with pytest.raises(EngineError) as err:
            engine.execute({"no_input": True})
        assert (err.value.status, err.value.code) == (422, "VALIDATION_ERROR")

    listed = product.client.list_engines().engines[0]
    with pytest.raises(ValueError, match="no key"):
        EngineClient.from_engine(listed)

    with EngineClient(f"http://127.0.0.1:{free_port()}", "k", timeout=5) as gone:
        with pytest.raises(TransportError):
            gone.execute("hi")
        with pytest.raises(TransportError):
            gone.stream("hi")


def test_a_json_answer_where_events_were_asked_for_is_an_error() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"output": "x"}))
    engine = EngineClient("http://engine.test", "k", http_client=httpx.Client(transport=transport))
    with pytest.raises(EngineError, match="text/event-stream"):
        engine.stream("hi")


def test_requests_carry_the_engine_key_and_ask_for_events() -> None:
    seen: List[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = b'data: {"token": "hi"}\n\nevent: done\ndata: {}\n\n'
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=body)

    engine = EngineClient("http://engine.test/", "sk-sept-k", http_client=httpx.Client(transport=httpx.MockTransport(answer)))
    assert [e.event for e in engine.stream({"input": "x"}, path="/v2/run")] == ["message", "done"]
    req = seen[0]
    assert str(req.url) == "http://engine.test/v2/run"
    assert req.headers["X-Engine-Key"] == "sk-sept-k"
    assert req.headers["Accept"] == "text/event-stream"
    assert json.loads(req.read()) == {"input": "x"}


def test_sse_decoder_follows_the_event_stream_rules() -> None:
    d = SSEDecoder()
    stream = (
        ": a comment\n"
        "data: one\n"
        "data:two\n"
        "\n"
        "event: update\r\n"
        "id: 7\r\n"
        "retry: 1500\r\n"
        "data:  spaced\r\n"
        "\r\n"
        "event: empty\n"
        "\n"
        "data\r"
        "\r"
        "id: 8\0\n"
        "data: keeps id 7\n"
        "\n"
        "data: unfinished"
    )
    events: List[ServerSentEvent] = []
    # Fed one character at a time, as the worst network would deliver it.
    for ch in stream:
        events.extend(d.feed(ch))
    assert events == [
        ServerSentEvent(data="one\ntwo"),
        ServerSentEvent(data=" spaced", event="update", id="7", retry=1500),
        ServerSentEvent(data="", id="7"),
        ServerSentEvent(data="keeps id 7", id="7"),
    ]
    assert d.feed("") == [], "an event without its blank line is never dispatched"


def test_multibyte_text_split_across_chunks() -> None:
    body = 'data: {"token": "héllo ✓"}\n\n'.encode()

    def answer(request: httpx.Request) -> httpx.Response:
        chunks = [body[i : i + 1] for i in range(len(body))]
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=iter(chunks))

    engine = EngineClient("http://engine.test", "k", http_client=httpx.Client(transport=httpx.MockTransport(answer)))
    assert [e.json() for e in engine.stream("x")] == [{"token": "héllo ✓"}]
