"""Python client of bap-engine, the orchestrator that gives every user of a
product their own long-running engine.

Three lines take a product from a user id to the engine's streamed answer::

    bap = Client("http://127.0.0.1:8000", platform_key="pk-sept-...")
    engine = bap.engine_for("alice")  # admit: provision or wake as needed
    for event in engine.stream({"input": "hello"}): print(event.data)

:class:`Client` and :class:`AsyncClient` cover the orchestrator's HTTP API;
:class:`EngineClient` and :class:`AsyncEngineClient` call an engine's
``/execute`` and iterate its server-sent events; :class:`LogStream` and
:class:`AsyncLogStream` follow an engine's own log. Every failure is a
:class:`BapEngineError` carrying ``code``, ``message``, ``status`` and
``retry_after``. The only dependency is ``httpx``.
"""

from .client import DEFAULT_TIMEOUT, ROLLOUT_ACTIONS, UPGRADE_TIMEOUT, AsyncClient, Client, RetryHook
from .engine import (
    DEFAULT_ENGINE_TIMEOUT,
    AsyncEngineClient,
    AsyncEventStream,
    EngineClient,
    EventStream,
    ServerSentEvent,
    SSEDecoder,
)
from .logs import AsyncLogStream, LineDecoder, LogStream
from . import errors as _errors
from . import types as _types
from .errors import *  # noqa: F401,F403 - every exception is part of the package's surface
from .types import *  # noqa: F401,F403 - so is every answer's type

__version__ = "0.2.0"

__all__ = [
    "Client",
    "AsyncClient",
    "RetryHook",
    "DEFAULT_TIMEOUT",
    "UPGRADE_TIMEOUT",
    "ROLLOUT_ACTIONS",
    "LogStream",
    "AsyncLogStream",
    "LineDecoder",
    "EngineClient",
    "AsyncEngineClient",
    "EventStream",
    "AsyncEventStream",
    "ServerSentEvent",
    "SSEDecoder",
    "DEFAULT_ENGINE_TIMEOUT",
]
__all__ += _errors.__all__
__all__ += _types.__all__
