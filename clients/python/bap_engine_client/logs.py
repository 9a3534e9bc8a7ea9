"""A followed engine log: the lines an engine writes, as it writes them.

:meth:`Client.follow_logs <bap_engine_client.Client.follow_logs>` (and its
asyncio form) return one of these streams; iterate it for lines. The
connection stays open until the stream is closed, the ``with`` block ends,
or the orchestrator shuts down.
"""

from __future__ import annotations

import codecs
from typing import Any, AsyncIterator, Iterator, List

import httpx

from .errors import TransportError

__all__ = ["LogStream", "AsyncLogStream", "LineDecoder"]


class LineDecoder:
    """Incremental splitter of UTF-8 bytes into lines (without their
    ``\\n`` or ``\\r\\n``); invalid bytes become U+FFFD."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, chunk: bytes) -> List[str]:
        """The lines completed by ``chunk``."""
        text = self._pending + self._utf8.decode(chunk)
        parts = text.split("\n")
        self._pending = parts.pop()
        return [p[:-1] if p.endswith("\r") else p for p in parts]

    def end(self) -> List[str]:
        """The last line when the body did not end with a newline."""
        rest = self._pending + self._utf8.decode(b"", final=True)
        self._pending = ""
        return [rest.rstrip("\r")] if rest else []


class LogStream:
    """The lines of a followed engine log (blocking).

    Iterate it for ``str`` lines, without their line ends. The iteration ends
    when the orchestrator ends the stream (it shuts down, or the engine's log
    is gone); :meth:`close` or leaving a ``with`` block ends it from this
    side. A dropped connection raises
    :class:`~bap_engine_client.errors.TransportError`.
    """

    def __init__(self, response: httpx.Response, context: Any) -> None:
        self.response = response
        self._context = context
        self._closed = False

    def __iter__(self) -> Iterator[str]:
        decoder = LineDecoder()
        try:
            for chunk in self.response.iter_bytes():
                yield from decoder.feed(chunk)
            yield from decoder.end()
        except httpx.HTTPError as err:
            if not self._closed:
                raise TransportError(f"engine log stream: {err}") from err
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if not self._closed:
            self._closed = True
            self._context.__exit__(None, None, None)

    def __enter__(self) -> "LogStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncLogStream:
    """The asyncio form of :class:`LogStream` (``async for``, ``async with``)."""

    def __init__(self, response: httpx.Response, context: Any) -> None:
        self.response = response
        self._context = context
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[str]:
        decoder = LineDecoder()
        try:
            async for chunk in self.response.aiter_bytes():
                for line in decoder.feed(chunk):
                    yield line
            for line in decoder.end():
                yield line
        except httpx.HTTPError as err:
            if not self._closed:
                raise TransportError(f"engine log stream: {err}") from err
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (idempotent)."""
        if not self._closed:
            self._closed = True
            await self._context.__aexit__(None, None, None)

    async def __aenter__(self) -> "AsyncLogStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
