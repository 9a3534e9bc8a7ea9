"""What the sync and async clients share: requests as values, answers
decoded the same way, and the admit helper's retry decisions."""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Dict, Generic, Iterator, List, Mapping, Optional, TypeVar
from urllib.parse import quote

import httpx

from .errors import ApiError, BapEngineError, EngineError, RateLimitedError, TransportError, error_for

HEADER_PLATFORM_KEY = "X-Platform-Key"
HEADER_ADMIN_KEY = "X-Admin-Key"
HEADER_ENGINE_KEY = "X-Engine-Key"

#: How much of an error answer is read.
MAX_ERROR_BODY = 64 * 1024

#: Backoff of retryable errors without Retry-After: first and longest wait.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0

PLATFORM = "platform"
ADMIN = "admin"

T = TypeVar("T")
P = TypeVar("P", bound="Pool")
AP = TypeVar("AP", bound="AsyncPool")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One orchestrator request and how to decode its answer into a T."""

    method: str
    path: str
    auth: Optional[str]
    decode: Callable[[httpx.Response], T]
    body: Any = None
    params: Dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The call as errors name it (``"GET /health"``)."""
        return f"{self.method} {self.path}"


class Pool:
    """What a blocking client adds to its connection pool ``_http``:
    :meth:`close` (when the pool is its own) and ``with``."""

    _http: httpx.Client
    _owns_http: bool

    def close(self) -> None:
        """Close the connection pool (unless it was passed in)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncPool:
    """The asyncio form of :class:`Pool`: :meth:`aclose` and ``async with``."""

    _http: httpx.AsyncClient
    _owns_http: bool

    async def aclose(self) -> None:
        """Close the connection pool (unless it was passed in)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self: AP) -> AP:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


def engine_path(user_id: str, action: str = "") -> str:
    """The path of a user's engine route; the user id is always one escaped segment."""
    path = "/engines/" + quote(user_id, safe="")
    return path + "/" + action if action else path


def product_path(product_id: str, action: str = "") -> str:
    """The path of a product's admin route (the product by id or, on the
    operator routes, by slug)."""
    path = "/products/" + quote(product_id, safe="")
    return path + "/" + action if action else path


def rollout_path(product: str, rollout_id: str = "", action: str = "") -> str:
    """The path of a product's rollouts, of one rollout, or of an action on it."""
    path = product_path(product, "rollouts")
    for part in (rollout_id, action):
        if part:
            path += "/" + quote(part, safe="")
    return path


def page_params(**values: Optional[Any]) -> Dict[str, Any]:
    """Query parameters without the ones left to the server's default."""
    return {k: v for k, v in values.items() if v is not None}


def json_of(from_json: Callable[[Any], T]) -> Callable[[httpx.Response], T]:
    """A decoder of a JSON answer through ``from_json`` (a type's ``from_json``)."""

    def decode(response: httpx.Response) -> T:
        return from_json(response.json())

    return decode


def json_object(response: httpx.Response) -> Dict[str, Any]:
    """The answer's JSON object as it is."""
    data = response.json()
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    return data


def text(response: httpx.Response) -> str:
    """The answer's text."""
    return response.text


def lines(response: httpx.Response) -> List[str]:
    """The answer's text as lines, without their line ends."""
    return response.text.splitlines()


def headers_for(call: Call[Any], platform_key: Optional[str], admin_key: Optional[str]) -> Dict[str, str]:
    """The headers of a call: Accept, the key its route needs, Content-Type."""
    headers = {"Accept": "application/json"}
    if call.auth == PLATFORM:
        headers[HEADER_PLATFORM_KEY] = platform_key or ""
    elif call.auth == ADMIN:
        headers[HEADER_ADMIN_KEY] = admin_key or ""
    if call.body is not None:
        headers["Content-Type"] = "application/json"
    return headers


def encode_body(body: Any) -> Optional[bytes]:
    """The JSON bytes of a request body (None when there is none)."""
    return None if body is None else json.dumps(body).encode()


def parse_retry_after(value: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
    """Seconds a ``Retry-After`` value asks to wait: delay seconds or an HTTP
    date. ``None`` when absent or unreadable; never negative."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max((when - now).total_seconds(), 0.0)


@contextlib.contextmanager
def transport_errors(name: str) -> Iterator[None]:
    """Raise an httpx failure inside the block as a TransportError naming
    the call (``"GET /health"``). Also around an ``await``."""
    try:
        yield
    except httpx.HTTPError as err:
        raise TransportError(f"{name}: {err}") from err


def read_error_body(response: httpx.Response) -> bytes:
    """The first :data:`MAX_ERROR_BODY` bytes of a streamed error answer."""
    body = b""
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= MAX_ERROR_BODY:
            break
    return body[:MAX_ERROR_BODY]


async def aread_error_body(response: httpx.Response) -> bytes:
    """The asyncio form of :func:`read_error_body`."""
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= MAX_ERROR_BODY:
            break
    return body[:MAX_ERROR_BODY]


def _envelope(body: bytes) -> Optional[Mapping[str, Any]]:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("code"):
            return err
    return None


def _plain_message(response: httpx.Response, body: bytes) -> str:
    message = body.decode("utf-8", "replace").strip()[:200]
    return message or response.reason_phrase or f"HTTP {response.status_code}"


def api_error(response: httpx.Response, body: bytes) -> ApiError:
    """The exception of a non-2xx orchestrator answer whose body (at most
    :data:`MAX_ERROR_BODY` bytes) was read."""
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    env = _envelope(body)
    if env is not None:
        return error_for(response.status_code, str(env["code"]), str(env.get("message", "")), retry_after)
    return error_for(response.status_code, None, _plain_message(response, body), retry_after)


def engine_answer(response: httpx.Response) -> httpx.Response:
    """``response`` when it is a 2xx engine answer; else its EngineError is raised."""
    if not response.is_success:
        raise engine_error(response, response.content[:MAX_ERROR_BODY])
    return response


def engine_error(response: httpx.Response, body: bytes) -> EngineError:
    """The exception of a non-2xx engine answer."""
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    env = _envelope(body)
    if env is not None:
        return EngineError(str(env.get("message", "")), code=str(env["code"]), status=response.status_code, retry_after=retry_after)
    return EngineError(_plain_message(response, body), status=response.status_code, retry_after=retry_after)


def decode_failed(call_name: str, err: Exception) -> BapEngineError:
    """The exception of a 2xx answer that is not what the route documents."""
    return BapEngineError(f"{call_name}: unreadable answer: {err}")


def retry_delay(err: BapEngineError, attempt: int, remaining: float) -> Optional[float]:
    """How long the admit helper waits before attempt ``attempt + 1`` after
    ``err``, or ``None`` to raise ``err`` now.

    RATE_LIMITED waits its ``Retry-After``; other retryable errors back off
    exponentially (with jitter) from :data:`BACKOFF_FIRST` to
    :data:`BACKOFF_MAX`. A wait that would not end ``remaining`` seconds from
    now is not made: the caller learns at once that the deadline cannot be met.
    """
    if not err.retryable:
        return None
    if isinstance(err, RateLimitedError) or err.retry_after is not None:
        delay = err.retry_after if err.retry_after is not None else 1.0
    else:
        delay = min(BACKOFF_FIRST * (2 ** attempt), BACKOFF_MAX) * (0.5 + random.random() / 2)
    if delay >= remaining:
        return None
    return delay


def attempt_timeout(default: Optional[float], remaining: float) -> Optional[float]:
    """The timeout of one attempt of the admit helper: the client's own, cut
    to what is left of the deadline."""
    if default is None:
        return max(remaining, 0.001)
    return max(min(default, remaining), 0.001)


class Retries:
    """The attempts of an admit helper: each one's timeout, and the wait
    after each retryable failure, until ``deadline`` seconds from now."""

    def __init__(
        self, deadline: float, timeout: Optional[float], on_retry: Optional[Callable[[BapEngineError, float], None]]
    ) -> None:
        if not deadline > 0:
            raise ValueError("deadline must be a positive number of seconds")
        self._end = time.monotonic() + deadline
        self._timeout = timeout
        self._on_retry = on_retry
        self._attempt = 0

    def timeout(self) -> Optional[float]:
        """The timeout of the next attempt (see :func:`attempt_timeout`)."""
        return attempt_timeout(self._timeout, self._end - time.monotonic())

    def wait_after(self, err: BapEngineError) -> float:
        """Seconds to wait after ``err`` before the next attempt (told to
        ``on_retry`` first); raises ``err`` when it is not retried (see
        :func:`retry_delay`)."""
        delay = retry_delay(err, self._attempt, self._end - time.monotonic())
        if delay is None:
            raise err
        if self._on_retry is not None:
            self._on_retry(err, delay)
        self._attempt += 1
        return delay
