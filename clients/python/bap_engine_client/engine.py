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
from typing import Any, AsyncIterator, Dict, Iterator, List, Mapping, Optional, Union

import httpx

from . import _http
from .errors import EngineError, TransportError
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


def _check_stream(response: httpx.Response) -> None:
    ctype = response.headers.get("Content-Type", "")
    if not ctype.startswith("text/event-stream"):
        raise EngineError(
            f"the engine answered {ctype or 'no content type'} where text/event-stream was asked for",
            status=response.status_code,
        )


class EventStream:
    """The events of one streamed engine answer (blocking).

    Iterate it for :class:`ServerSentEvent` values; the connection is closed
    when the stream ends, on :meth:`close`, or when a ``with`` block exits.
    """

    def __init__(self, response: httpx.Response, context: Any) -> None:
        self.response = response
        self._context = context
        self._closed = False

    def __iter__(self) -> Iterator[ServerSentEvent]:
        decoder = SSEDecoder()
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            for chunk in self.response.iter_bytes():
                yield from decoder.feed(utf8.decode(chunk))
            yield from decoder.feed(utf8.decode(b"", final=True))
        except httpx.HTTPError as err:
            raise TransportError(f"engine stream: {err}") from err
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if not self._closed:
            self._closed = True
            self._context.__exit__(None, None, None)

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncEventStream:
    """The asyncio form of :class:`EventStream` (``async for``, ``async with``)."""

    def __init__(self, response: httpx.Response, context: Any) -> None:
        self.response = response
        self._context = context
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[ServerSentEvent]:
        decoder = SSEDecoder()
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            async for chunk in self.response.aiter_bytes():
                for event in decoder.feed(utf8.decode(chunk)):
                    yield event
            for event in decoder.feed(utf8.decode(b"", final=True)):
                yield event
        except httpx.HTTPError as err:
            raise TransportError(f"engine stream: {err}") from err
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (idempotent)."""
        if not self._closed:
            self._closed = True
            await self._context.__aexit__(None, None, None)

    async def __aenter__(self) -> "AsyncEventStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class _EngineBase:
    def __init__(self, url: str, api_key: str, timeout: Optional[float]) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

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


class EngineClient(_EngineBase):
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
        super().__init__(url, api_key, timeout)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client()

    @classmethod
    def from_engine(cls, engine: EngineInfo, **kwargs: Any) -> "EngineClient":
        """The client of an admitted engine (``EngineInfo`` with its key)."""
        if not engine.api_key:
            raise ValueError("this EngineInfo carries no key (lists never do): admit or get the engine first")
        return cls(engine.url, engine.api_key, **kwargs)

    def close(self) -> None:
        """Close the connection pool if this client owns it."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> "EngineClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def health(self) -> Dict[str, Any]:
        """The engine's ``GET /health`` answer (no key needed). Raises
        EngineError when it is not ready."""
        try:
            response = self._http.get(self.url + "/health", timeout=self.timeout)
        except httpx.HTTPError as err:
            raise TransportError(f"GET {self.url}/health: {err}") from err
        if not response.is_success:
            raise _http.engine_error(response, response.content[: _http.MAX_ERROR_BODY])
        return dict(response.json())

    def execute(self, payload: Payload, *, path: str = "/execute") -> Any:
        """POST ``payload`` to the engine and return its JSON answer.

        A string payload is sent as ``{"input": payload}``. Raises
        EngineError on a non-2xx answer (a 401 means the key is stale:
        admit again) and TransportError when the engine cannot be reached.
        """
        try:
            response = self._http.request(**self._args(path, payload, "application/json"))
        except httpx.HTTPError as err:
            raise TransportError(f"POST {self.url}{path}: {err}") from err
        if not response.is_success:
            raise _http.engine_error(response, response.content[: _http.MAX_ERROR_BODY])
        return response.json()

    def stream(self, payload: Payload, *, path: str = "/execute") -> EventStream:
        """POST ``payload`` asking for server-sent events and return the
        open :class:`EventStream` of the answer.

        The request is made here, so an engine error is raised before the
        first event (EngineError, TransportError), while the caller can still
        answer its own client with a proper status.
        """
        context = self._http.stream(**self._args(path, payload, "text/event-stream"))
        try:
            response = context.__enter__()
        except httpx.HTTPError as err:
            raise TransportError(f"POST {self.url}{path}: {err}") from err
        try:
            if not response.is_success:
                response.read()
                raise _http.engine_error(response, response.content[: _http.MAX_ERROR_BODY])
            _check_stream(response)
        except BaseException:
            context.__exit__(None, None, None)
            raise
        return EventStream(response, context)


class AsyncEngineClient(_EngineBase):
    """The asyncio form of :class:`EngineClient`."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: Optional[float] = DEFAULT_ENGINE_TIMEOUT,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        super().__init__(url, api_key, timeout)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient()

    @classmethod
    def from_engine(cls, engine: EngineInfo, **kwargs: Any) -> "AsyncEngineClient":
        """See :meth:`EngineClient.from_engine`."""
        if not engine.api_key:
            raise ValueError("this EngineInfo carries no key (lists never do): admit or get the engine first")
        return cls(engine.url, engine.api_key, **kwargs)

    async def aclose(self) -> None:
        """Close the connection pool if this client owns it."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> "AsyncEngineClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def health(self) -> Dict[str, Any]:
        """See :meth:`EngineClient.health`."""
        try:
            response = await self._http.get(self.url + "/health", timeout=self.timeout)
        except httpx.HTTPError as err:
            raise TransportError(f"GET {self.url}/health: {err}") from err
        if not response.is_success:
            raise _http.engine_error(response, response.content[: _http.MAX_ERROR_BODY])
        return dict(response.json())

    async def execute(self, payload: Payload, *, path: str = "/execute") -> Any:
        """See :meth:`EngineClient.execute`."""
        try:
            response = await self._http.request(**self._args(path, payload, "application/json"))
        except httpx.HTTPError as err:
            raise TransportError(f"POST {self.url}{path}: {err}") from err
        if not response.is_success:
            raise _http.engine_error(response, response.content[: _http.MAX_ERROR_BODY])
        return response.json()

    async def stream(self, payload: Payload, *, path: str = "/execute") -> AsyncEventStream:
        """See :meth:`EngineClient.stream`; returns an :class:`AsyncEventStream`."""
        context = self._http.stream(**self._args(path, payload, "text/event-stream"))
        try:
            response = await context.__aenter__()
        except httpx.HTTPError as err:
            raise TransportError(f"POST {self.url}{path}: {err}") from err
        try:
            if not response.is_success:
                await response.aread()
                raise _http.engine_error(response, response.content[: _http.MAX_ERROR_BODY])
            _check_stream(response)
        except BaseException:
            await context.__aexit__(None, None, None)
            raise
        return AsyncEventStream(response, context)
