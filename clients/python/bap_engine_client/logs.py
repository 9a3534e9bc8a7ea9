"""A followed engine log: the lines an engine writes, as it writes them.

:meth:`Client.follow_logs <bap_engine_client.Client.follow_logs>` (and its
asyncio form) return one of these streams; iterate it for lines. The
connection stays open until the stream is closed, the ``with`` block ends,
or the orchestrator shuts down.
"""

from __future__ import annotations

import codecs
from typing import List

from ._stream import AsyncStream, Stream

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


class LogStream(Stream[str]):
    """The lines of a followed engine log (blocking).

    Iterate it for ``str`` lines, without their line ends. The iteration ends
    when the orchestrator ends the stream (it shuts down, or the engine's log
    is gone); :meth:`close` or leaving a ``with`` block ends it from this
    side. A dropped connection raises
    :class:`~bap_engine_client.errors.TransportError`.
    """

    _what = "engine log stream"
    _closing_ends_quietly = True
    _decoder = LineDecoder


class AsyncLogStream(AsyncStream[str]):
    """The asyncio form of :class:`LogStream` (``async for``, ``async with``)."""

    _what = "engine log stream"
    _closing_ends_quietly = True
    _decoder = LineDecoder
