"""Talking to an engine: the data path, which the orchestrator is not on.

After an admit, a product calls the engine at ``EngineInfo.url`` with its
key in ``X-Engine-Key``. :class:`EngineClient` (and :class:`AsyncEngineClient`)
do that for the engine contract's ``/execute``: a JSON answer with
:meth:`EngineClient.execute`, or server-sent events with
:meth:`EngineClient.stream`. Keep an engine client for one user request; the
next request admits again (the answer is cached by the orchestrator and
cheap), which is how a rotated key or a moved engine is picked up.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Type, TypeVar, Union

import httpx

from . import _http
from ._stream import AsyncStream, Stream
from .errors import EngineError
from .types import EngineInfo

__all__ = [
    "ServerSentEvent",
    "SSEDecoder",
    "EngineClient",
    "AsyncEngineClient",
    "EventStream",
    "AsyncEventStream",
    "DEFAULT_ENGINE_TIMEOUT",
]

#: Seconds an engine call may wait for the next bytes (a streamed answer may
#: take longer in total: the bound is between reads).
DEFAULT_ENGINE_TIMEOUT = 120.0

Payload = Union[str, Mapping[str, Any]]


@dataclass(frozen=True)
class ServerSentEvent:
    """One server-sent event: its type (``"message"`` unless the stream named
    one), its data (lines joined by newlines), and its id and retry fields."""

    data: str
    event: str = "message"
    id: Optional[str] = None
    retry: Optional[int] = None

    def json(self) -> Any:
        """The data parsed as JSON."""
        return json.loads(self.data)


class SSEDecoder:
    """Incremental parser of a ``text/event-stream`` body (the WHATWG rules).

    Feed it text as it arrives; it returns the events completed so far.
    Lines may end with CRLF, LF or CR; comment lines (``:``) are skipped; an
    event without data is not dispatched; an unfinished event at the end of
    the stream is dropped, as browsers do.
    """

    def __init__(self) -> None:
        self._pending = ""
        self._data: List[str] = []
        self._event = ""
        self._last_id: Optional[str] = None
        self._retry: Optional[int] = None

    def feed(self, chunk: str) -> List[ServerSentEvent]:
        """Parse ``chunk`` and return the events it completes."""
        text = self._pending + chunk
        events: List[ServerSentEvent] = []
        start = 0
        i = 0
        n = len(text)
        while i < n:
            c = text[i]
            if c == "\n" or c == "\r":
                if c == "\r" and i + 1 == n:
                    break  # a CR at the end may be the first half of CRLF
                self._line(text[start:i], events)
                i += 2 if c == "\r" and text[i + 1] == "\n" else 1
                start = i
                continue
            i += 1
        self._pending = text[start:]
        return events

    def _line(self, line: str, events: List[ServerSentEvent]) -> None:
        if line == "":
            if self._data:
                events.append(
                    ServerSentEvent(
                        data="\n".join(self._data),
                        event=self._event or "message",
                        id=self._last_id,
                        retry=self._retry,
                    )
                )
            self._data, self._event, self._retry = [], "", None
            return
        if line.startswith(":"):
            return
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)


def _body(payload: Payload) -> bytes:
    if isinstance(payload, str):
        payload = {"input": payload}
    return json.dumps(dict(payload)).encode()


def _headers(api_key: str, accept: str) -> Dict[str, str]:
    return {_http.HEADER_ENGINE_KEY: api_key, "Accept": accept, "Content-Type": "application/json"}


class _EventDecoder:
    """The events of a streamed body of UTF-8 bytes."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._sse = SSEDecoder()

    def feed(self, chunk: bytes) -> List[ServerSentEvent]:
        return self._sse.feed(self._utf8.decode(chunk))

    def end(self) -> List[ServerSentEvent]:
        return self._sse.feed(self._utf8.decode(b"", final=True))


class _Events:
    """What :class:`EventStream` and :class:`AsyncEventStream` add to a stream."""

    _what = "engine stream"
    _decoder = _EventDecoder

    @staticmethod
    def _check(response: httpx.Response) -> None:
        ctype = response.headers.get("Content-Type", "")
        if not ctype.startswith("text/event-stream"):
            raise EngineError(
                f"the engine answered {ctype or 'no content type'} where text/event-stream was asked for",
                status=response.status_code,
            )


class EventStream(_Events, Stream[ServerSentEvent]):
    """The events of one streamed engine answer (blocking).

    Iterate it for :class:`ServerSentEvent` values; the connection is closed
    when the stream ends, on :meth:`close`, or when a ``with`` block exits.
    """


class AsyncEventStream(_Events, AsyncStream[ServerSentEvent]):
    """The asyncio form of :class:`EventStream` (``async for``, ``async with``)."""


E = TypeVar("E", bound="_EngineBase")


class _EngineBase:
    """What both engine clients share: the engine, its key, and the requests."""

    def __init__(
        self, url: str, api_key: str, timeout: Optional[float], http: Any, own_http: Callable[[], Any]
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._owns_http = http is None
        self._http = own_http() if http is None else http

    @classmethod
    def from_engine(cls: Type[E], engine: EngineInfo, **kwargs: Any) -> E:
        """The client of an admitted engine (``EngineInfo`` with its key)."""
        if not engine.api_key:
            raise ValueError("this EngineInfo carries no key (lists never do): admit or get the engine first")
        return cls(engine.url, engine.api_key, **kwargs)

    def __repr__(self) -> str:
        # Never the key.
        return f"{type(self).__name__}({self.url!r})"

    def _args(self, path: str, payload: Payload, accept: str) -> Dict[str, Any]:
        return {
            "method": "POST",
            "url": self.url + path,
            "content": _body(payload),
            "headers": _headers(self.api_key, accept),
            "timeout": self.timeout,
        }


class EngineClient(_EngineBase, _http.Pool):
    """Blocking client of one engine at ``url`` with its key.

    ``http_client`` shares an ``httpx.Client`` (the orchestrator client's,
    when made by :meth:`~bap_engine_client.Client.engine_for`); otherwise the
    engine client owns one and :meth:`close` closes it.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: Optional[float] = DEFAULT_ENGINE_TIMEOUT,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        super().__init__(url, api_key, timeout, http_client, httpx.Client)

    def health(self) -> Dict[str, Any]:
        """The engine's ``GET /health`` answer (no key needed). Raises
        EngineError when it is not ready."""
        with _http.transport_errors(f"GET {self.url}/health"):
            response = self._http.get(self.url + "/health", timeout=self.timeout)
        return dict(_http.engine_answer(response).json())

    def execute(self, payload: Payload, *, path: str = "/execute") -> Any:
        """POST ``payload`` to the engine and return its JSON answer.

        A string payload is sent as ``{"input": payload}``. Raises
        EngineError on a non-2xx answer (a 401 means the key is stale:
        admit again) and TransportError when the engine cannot be reached.
        """
        with _http.transport_errors(f"POST {self.url}{path}"):
            response = self._http.request(**self._args(path, payload, "application/json"))
        return _http.engine_answer(response).json()

    def stream(self, payload: Payload, *, path: str = "/execute") -> EventStream:
        """POST ``payload`` asking for server-sent events and return the
        open :class:`EventStream` of the answer.

        The request is made here, so an engine error is raised before the
        first event (EngineError, TransportError), while the caller can still
        answer its own client with a proper status.
        """
        request = self._args(path, payload, "text/event-stream")
        return EventStream._open(self._http, request, f"POST {self.url}{path}", _http.engine_error)


class AsyncEngineClient(_EngineBase, _http.AsyncPool):
    """The asyncio form of :class:`EngineClient`."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: Optional[float] = DEFAULT_ENGINE_TIMEOUT,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        super().__init__(url, api_key, timeout, http_client, httpx.AsyncClient)

    async def health(self) -> Dict[str, Any]:
        """See :meth:`EngineClient.health`."""
        with _http.transport_errors(f"GET {self.url}/health"):
            response = await self._http.get(self.url + "/health", timeout=self.timeout)
        return dict(_http.engine_answer(response).json())

    async def execute(self, payload: Payload, *, path: str = "/execute") -> Any:
        """See :meth:`EngineClient.execute`."""
        with _http.transport_errors(f"POST {self.url}{path}"):
            response = await self._http.request(**self._args(path, payload, "application/json"))
        return _http.engine_answer(response).json()

    async def stream(self, payload: Payload, *, path: str = "/execute") -> AsyncEventStream:
        """See :meth:`EngineClient.stream`; returns an :class:`AsyncEventStream`."""
        request = self._args(path, payload, "text/event-stream")
        return await AsyncEventStream._open(self._http, request, f"POST {self.url}{path}", _http.engine_error)
