"""What the open streamed answers share (an engine's server-sent events, a
followed log): opening the request, reading its body through an incremental
decoder, reporting a dropped connection, closing."""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Generic, Iterator, List, Protocol, Type, TypeVar

import httpx

from . import _http
from .errors import BapEngineError, TransportError

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
S = TypeVar("S", bound="Stream[Any]")
A = TypeVar("A", bound="AsyncStream[Any]")

#: The exception of a non-2xx answer whose body (at most
#: :data:`~bap_engine_client._http.MAX_ERROR_BODY` bytes) was read.
ErrorOf = Callable[[httpx.Response, bytes], BapEngineError]


class Decoder(Protocol[T_co]):
    """An incremental decoder of a streamed body into items."""

    def feed(self, chunk: bytes) -> List[T_co]:
        """The items completed by ``chunk``."""

    def end(self) -> List[T_co]:
        """The items completed by the end of the body."""


class _Base(Generic[T]):
    #: Names the stream in the TransportError of a dropped connection.
    _what = "stream"
    #: Whether a transport error after :meth:`close` is the closing itself
    #: (and ends the iteration quietly) rather than an error.
    _closing_ends_quietly = False

    #: Makes the decoder of one body.
    _decoder: Callable[[], Decoder[T]]

    def __init__(self, response: httpx.Response, context: Any) -> None:
        self.response = response
        self._context = context
        self._closed = False

    @staticmethod
    def _check(response: httpx.Response) -> None:
        """Raise when a 2xx answer is not the stream asked for."""

    def _dropped(self, err: httpx.HTTPError) -> None:
        if not (self._closing_ends_quietly and self._closed):
            raise TransportError(f"{self._what}: {err}") from err


class Stream(_Base[T]):
    """A streamed answer (blocking): iterate it for its items; the
    connection is closed when the body ends, on :meth:`close`, or when a
    ``with`` block exits."""

    @classmethod
    def _open(cls: Type[S], http: httpx.Client, request: Any, name: str, error: ErrorOf) -> S:
        """Send ``request`` (``httpx.Client.stream`` arguments) and return the
        open stream of its answer. A failure is raised here, before the first
        item: TransportError naming the call ``name``, or ``error`` of the
        answer."""
        context = http.stream(**request)
        with _http.transport_errors(name):
            response = context.__enter__()
        try:
            if not response.is_success:
                raise error(response, _http.read_error_body(response))
            cls._check(response)
        except BaseException:
            context.__exit__(None, None, None)
            raise
        return cls(response, context)

    def __iter__(self) -> Iterator[T]:
        decoder = self._decoder()
        try:
            for chunk in self.response.iter_bytes():
                yield from decoder.feed(chunk)
            yield from decoder.end()
        except httpx.HTTPError as err:
            self._dropped(err)
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if not self._closed:
            self._closed = True
            self._context.__exit__(None, None, None)

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncStream(_Base[T]):
    """The asyncio form of :class:`Stream` (``async for``, ``async with``)."""

    @classmethod
    async def _open(cls: Type[A], http: httpx.AsyncClient, request: Any, name: str, error: ErrorOf) -> A:
        """See :meth:`Stream._open`."""
        context = http.stream(**request)
        with _http.transport_errors(name):
            response = await context.__aenter__()
        try:
            if not response.is_success:
                raise error(response, await _http.aread_error_body(response))
            cls._check(response)
        except BaseException:
            await context.__aexit__(None, None, None)
            raise
        return cls(response, context)

    async def __aiter__(self) -> AsyncIterator[T]:
        decoder = self._decoder()
        try:
            async for chunk in self.response.aiter_bytes():
                for item in decoder.feed(chunk):
                    yield item
            for item in decoder.end():
                yield item
        except httpx.HTTPError as err:
            self._dropped(err)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (idempotent)."""
        if not self._closed:
            self._closed = True
            await self._context.__aexit__(None, None, None)

    async def __aenter__(self: A) -> A:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
