"""The orchestrator clients: :class:`Client` (blocking) and
:class:`AsyncClient` (asyncio), with the same methods.

A product keeps one client for its lifetime (it holds a connection pool) and
calls :meth:`Client.admit_with_retry` (or :meth:`Client.engine_for`) on every
user request, then talks to the engine directly.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, Optional, TypeVar

import httpx

from . import _http
from ._http import ADMIN, PLATFORM, Call
from .engine import AsyncEngineClient, EngineClient
from .errors import AdmissionDenied, BapEngineError, TransportError
from .types import (
    AdmitResult,
    AuditPage,
    Destroyed,
    EngineInfo,
    EngineList,
    FleetMetrics,
    FleetStatus,
    Health,
    KeyRotated,
    PlatformKeyRotation,
    ProductRegistration,
    Provisioned,
    Started,
    Stopped,
)

__all__ = ["Client", "AsyncClient", "DEFAULT_TIMEOUT", "RetryHook"]

#: Seconds one orchestrator call may take. A provision or an admit that
#: provisions waits for the engine to boot (ORCH_BOOT_TIMEOUT_S, 60 s by
#: default), so this is longer than that.
DEFAULT_TIMEOUT = 90.0

#: Called by the admit helpers before each wait: the error and the seconds
#: about to be waited.
RetryHook = Callable[[BapEngineError, float], None]

T = TypeVar("T")

# The waits of the admit helpers (tests replace them to avoid real waiting).
_sleep = time.sleep
_async_sleep = asyncio.sleep


class _Calls:
    """The requests of the API, built once for both clients."""

    @staticmethod
    def provision(user_id: str, engine_version: Optional[str]) -> Call[Provisioned]:
        body: Dict[str, Any] = {"user_id": user_id}
        if engine_version is not None:
            body["engine_version"] = engine_version
        return Call("POST", "/engines/provision", PLATFORM, _http.json_of(Provisioned.from_json), body)

    @staticmethod
    def engine_action(method: str, user_id: str, action: str, from_json: Callable[[Any], T]) -> Call[T]:
        return Call(method, _http.engine_path(user_id, action), PLATFORM, _http.json_of(from_json))

    @staticmethod
    def admit(user_id: str, auto_provision: bool, auto_wake: bool) -> Call[AdmitResult]:
        body = {"auto_provision": bool(auto_provision), "auto_wake": bool(auto_wake)}
        return Call("POST", _http.engine_path(user_id, "admit"), PLATFORM, _http.json_of(AdmitResult.from_json), body)

    @staticmethod
    def list_engines(status: Optional[str], limit: Optional[int], offset: Optional[int]) -> Call[EngineList]:
        params = _http.page_params(status=status, limit=limit, offset=offset)
        return Call("GET", "/engines", PLATFORM, _http.json_of(EngineList.from_json), params=params)

    @staticmethod
    def audit(user_id: str, limit: Optional[int], offset: Optional[int]) -> Call[AuditPage]:
        params = _http.page_params(limit=limit, offset=offset)
        return Call("GET", _http.engine_path(user_id, "audit"), PLATFORM, _http.json_of(AuditPage.from_json), params=params)

    @staticmethod
    def register_product(slug: str, display_name: str, policy: Optional[Dict[str, Any]]) -> Call[ProductRegistration]:
        body: Dict[str, Any] = {"slug": slug, "display_name": display_name}
        if policy is not None:
            body["policy"] = policy
        return Call("POST", "/products/register", ADMIN, _http.json_of(ProductRegistration.from_json), body)

    @staticmethod
    def update_policy(product_id: str, policy: Optional[Dict[str, Any]]) -> Call[Dict[str, Any]]:
        def decode(response: httpx.Response) -> Dict[str, Any]:
            return dict(_http.json_object(response)["policy"])

        return Call("PUT", _http.product_path(product_id, "policy"), ADMIN, decode, {"policy": policy or {}})

    @staticmethod
    def rotate_platform_key(product_id: str) -> Call[PlatformKeyRotation]:
        path = _http.product_path(product_id, "rotate-platform-key")
        return Call("POST", path, ADMIN, _http.json_of(PlatformKeyRotation.from_json))


def _deadline_of(deadline: float) -> float:
    if not deadline > 0:
        raise ValueError("deadline must be a positive number of seconds")
    return time.monotonic() + deadline


class _Base:
    """Configuration both clients share."""

    def __init__(
        self,
        base_url: str,
        *,
        platform_key: Optional[str],
        admin_key: Optional[str],
        timeout: Optional[float],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.platform_key = platform_key
        self.admin_key = admin_key
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def _request_args(self, call: Call[Any], timeout: Optional[float]) -> Dict[str, Any]:
        return {
            "method": call.method,
            "url": self.base_url + call.path,
            "params": call.params or None,
            "content": _http.encode_body(call.body),
            "headers": _http.headers_for(call, self.platform_key, self.admin_key),
            "timeout": timeout,
        }

    @staticmethod
    def _decode(call: Call[T], response: httpx.Response) -> T:
        try:
            return call.decode(response)
        except (ValueError, KeyError, TypeError) as err:
            raise _http.decode_failed(f"{call.method} {call.path}", err) from err


class Client(_Base):
    """Blocking client of one bap-engine orchestrator.

    ``platform_key`` is the product's key (``X-Platform-Key``), needed by the
    engine and fleet methods; ``admin_key`` (``X-Admin-Key``) is needed only
    by the product administration methods. ``timeout`` bounds each call in
    seconds (``None``: no bound). Pass ``http_client`` to reuse an
    ``httpx.Client`` of your own (proxies, TLS settings); it is not closed by
    :meth:`close` then.

    Every method raises a :class:`~bap_engine_client.errors.BapEngineError`
    subclass on failure: the orchestrator's error as the class of its code,
    a network failure as :class:`~bap_engine_client.errors.TransportError`.
    A client is safe to share between threads.
    """

    def __init__(
        self,
        base_url: str,
        *,
        platform_key: Optional[str] = None,
        admin_key: Optional[str] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        super().__init__(base_url, platform_key=platform_key, admin_key=admin_key, timeout=timeout)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client()

    def close(self) -> None:
        """Close the connection pool (unless it was passed in)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _send(self, call: Call[T], timeout: Optional[float] = None) -> T:
        args = self._request_args(call, self.timeout if timeout is None else timeout)
        try:
            with self._http.stream(**args) as response:
                if not response.is_success:
                    body = b""
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) >= _http.MAX_ERROR_BODY:
                            break
                    raise _http.api_error(response, body[: _http.MAX_ERROR_BODY])
                response.read()
        except httpx.HTTPError as err:
            raise TransportError(f"{call.method} {call.path}: {err}") from err
        return self._decode(call, response)

    # Engines.

    def provision(self, user_id: str, engine_version: Optional[str] = None) -> Provisioned:
        """Create the user's engine and wait until it runs.

        ``engine_version`` (an image reference) overrides the orchestrator's
        default image. Raises EngineAlreadyExistsError, QuotaExceededError,
        PortExhaustionError, BootTimeoutError, ValidationError.
        """
        return self._send(_Calls.provision(user_id, engine_version))

    def destroy(self, user_id: str) -> Destroyed:
        """Remove the user's engine and its data. Raises EngineNotFoundError."""
        return self._send(_Calls.engine_action("DELETE", user_id, "", Destroyed.from_json))

    def start(self, user_id: str) -> Started:
        """Start a stopped, sleeping or failed engine and wait until it runs.

        Raises EngineNotFoundError, EngineAlreadyRunningError, BootTimeoutError.
        """
        return self._send(_Calls.engine_action("POST", user_id, "start", Started.from_json))

    def stop(self, user_id: str) -> Stopped:
        """Stop the user's engine; its data is kept.

        Raises EngineNotFoundError, EngineNotRunningError.
        """
        return self._send(_Calls.engine_action("POST", user_id, "stop", Stopped.from_json))

    def rotate_key(self, user_id: str) -> KeyRotated:
        """Give the running engine a new key; the old one stops working.

        Raises EngineNotFoundError, EngineNotRunningError, BootTimeoutError.
        """
        return self._send(_Calls.engine_action("POST", user_id, "rotate-key", KeyRotated.from_json))

    def get(self, user_id: str) -> EngineInfo:
        """The user's engine, with its key. Raises EngineNotFoundError."""
        return self._send(_Calls.engine_action("GET", user_id, "", EngineInfo.from_json))

    def admit(self, user_id: str, *, auto_provision: bool = False, auto_wake: bool = False) -> AdmitResult:
        """One admit: the user's running engine, or why it is not admitted.

        With ``auto_provision`` a user without an engine gets one; with
        ``auto_wake`` a sleeping or stopped engine is woken. A denial is an
        answer (``admitted`` false, ``reason``), not an exception. Raises
        RateLimitedError (``retry_after`` set), QuotaExceededError,
        PortExhaustionError, BootTimeoutError.
        """
        return self._send(_Calls.admit(user_id, auto_provision, auto_wake))

    def admit_with_retry(
        self,
        user_id: str,
        *,
        auto_provision: bool = False,
        auto_wake: bool = False,
        deadline: float = 30.0,
        on_retry: Optional[RetryHook] = None,
    ) -> AdmitResult:
        """:meth:`admit`, repeated on retryable errors until ``deadline``
        seconds from now.

        A 429 RATE_LIMITED is retried after its ``Retry-After``; network
        failures, ENGINE_BUSY and 503 DATABASE_UNAVAILABLE or
        BACKEND_UNAVAILABLE after a short backoff. A wait that would end past
        the deadline is not made: the error is raised at once (so a product
        can tell its user "try again in N seconds" without holding the
        request). Each attempt's timeout is cut to the time left. Other
        errors (quota, port exhaustion, boot timeout, bad key) are raised as
        they come. ``on_retry(error, seconds)`` is called before each wait.
        """
        end = _deadline_of(deadline)
        call = _Calls.admit(user_id, auto_provision, auto_wake)
        attempt = 0
        while True:
            try:
                return self._send(call, _http.attempt_timeout(self.timeout, end - time.monotonic()))
            except BapEngineError as err:
                delay = _http.retry_delay(err, attempt, end - time.monotonic())
                if delay is None:
                    raise
                if on_retry is not None:
                    on_retry(err, delay)
                _sleep(delay)
                attempt += 1

    def engine_for(
        self, user_id: str, *, deadline: float = 30.0, on_retry: Optional[RetryHook] = None
    ) -> EngineClient:
        """The user's engine, ready to call: an admit with auto-provision and
        auto-wake (through :meth:`admit_with_retry`), wrapped in an
        :class:`~bap_engine_client.engine.EngineClient` that shares this
        client's connections.

        Raises :class:`~bap_engine_client.errors.AdmissionDenied` when the
        engine is not admitted (``engine_unhealthy``, ``engine_busy``), and
        the errors of :meth:`admit_with_retry`.
        """
        res = self.admit_with_retry(user_id, auto_provision=True, auto_wake=True, deadline=deadline, on_retry=on_retry)
        if not res.admitted or res.engine is None:
            raise AdmissionDenied(res.reason or "")
        return EngineClient.from_engine(res.engine, http_client=self._http)

    def list_engines(
        self, status: Optional[str] = None, limit: Optional[int] = None, offset: Optional[int] = None
    ) -> EngineList:
        """One page of the product's engines (without keys), oldest first.

        ``status`` filters by state; ``limit`` is 1 to 1000 (server default
        100). Raises ValidationError for a bad filter.
        """
        return self._send(_Calls.list_engines(status, limit, offset))

    def audit(self, user_id: str, limit: Optional[int] = None, offset: Optional[int] = None) -> AuditPage:
        """One page of the engine's audit trail, newest first. Raises EngineNotFoundError."""
        return self._send(_Calls.audit(user_id, limit, offset))

    # Fleet.

    def status(self) -> FleetStatus:
        """The product's engines by state and their health."""
        return self._send(Call("GET", "/status", PLATFORM, _http.json_of(FleetStatus.from_json)))

    def metrics(self) -> FleetMetrics:
        """The product's provisions, crashes, restarts and boot time (last hour, all time)."""
        return self._send(Call("GET", "/metrics", PLATFORM, _http.json_of(FleetMetrics.from_json)))

    # Products (admin key).

    def register_product(
        self, slug: str, display_name: str, policy: Optional[Dict[str, Any]] = None
    ) -> ProductRegistration:
        """Register a product; its platform key is in the answer only.

        Raises InvalidAdminKeyError, ProductSlugExistsError, ValidationError.
        """
        return self._send(_Calls.register_product(slug, display_name, policy))

    def update_policy(self, product_id: str, policy: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """Replace a product's policy (``None`` or ``{}``: no limits); returns it as stored.

        Known keys: max_engines, rate_limit_rpm, max_running,
        engine_memory_mb, engine_cpus. Raises InvalidAdminKeyError,
        ProductNotFoundError, ValidationError.
        """
        return self._send(_Calls.update_policy(product_id, policy))

    def rotate_platform_key(self, product_id: str) -> PlatformKeyRotation:
        """Give a product a new platform key; the old one works until
        ``previous_key_expires_at``. Raises InvalidAdminKeyError, ProductNotFoundError."""
        return self._send(_Calls.rotate_platform_key(product_id))

    # The orchestrator itself.

    def health(self) -> Health:
        """The orchestrator's health (no key). Raises an ApiError with status
        503 when its database is unreachable."""
        return self._send(Call("GET", "/health", None, _http.json_of(Health.from_json)))

    def prometheus_metrics(self) -> str:
        """The fleet-wide Prometheus text exposition (admin key)."""
        return self._send(Call("GET", "/metrics/prometheus", ADMIN, _http.text))

    def openapi(self) -> Dict[str, Any]:
        """The orchestrator's OpenAPI 3.1 document."""
        return self._send(Call("GET", "/openapi.json", None, _http.json_object))


class AsyncClient(_Base):
    """The asyncio form of :class:`Client`: the same methods, as coroutines.

    Use one per event loop; close it with :meth:`aclose` or ``async with``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        platform_key: Optional[str] = None,
        admin_key: Optional[str] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        super().__init__(base_url, platform_key=platform_key, admin_key=admin_key, timeout=timeout)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient()

    async def aclose(self) -> None:
        """Close the connection pool (unless it was passed in)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _send(self, call: Call[T], timeout: Optional[float] = None) -> T:
        args = self._request_args(call, self.timeout if timeout is None else timeout)
        try:
            async with self._http.stream(**args) as response:
                if not response.is_success:
                    body = b""
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) >= _http.MAX_ERROR_BODY:
                            break
                    raise _http.api_error(response, body[: _http.MAX_ERROR_BODY])
                await response.aread()
        except httpx.HTTPError as err:
            raise TransportError(f"{call.method} {call.path}: {err}") from err
        return self._decode(call, response)

    async def provision(self, user_id: str, engine_version: Optional[str] = None) -> Provisioned:
        """See :meth:`Client.provision`."""
        return await self._send(_Calls.provision(user_id, engine_version))

    async def destroy(self, user_id: str) -> Destroyed:
        """See :meth:`Client.destroy`."""
        return await self._send(_Calls.engine_action("DELETE", user_id, "", Destroyed.from_json))

    async def start(self, user_id: str) -> Started:
        """See :meth:`Client.start`."""
        return await self._send(_Calls.engine_action("POST", user_id, "start", Started.from_json))

    async def stop(self, user_id: str) -> Stopped:
        """See :meth:`Client.stop`."""
        return await self._send(_Calls.engine_action("POST", user_id, "stop", Stopped.from_json))

    async def rotate_key(self, user_id: str) -> KeyRotated:
        """See :meth:`Client.rotate_key`."""
        return await self._send(_Calls.engine_action("POST", user_id, "rotate-key", KeyRotated.from_json))

    async def get(self, user_id: str) -> EngineInfo:
        """See :meth:`Client.get`."""
        return await self._send(_Calls.engine_action("GET", user_id, "", EngineInfo.from_json))

    async def admit(self, user_id: str, *, auto_provision: bool = False, auto_wake: bool = False) -> AdmitResult:
        """See :meth:`Client.admit`."""
        return await self._send(_Calls.admit(user_id, auto_provision, auto_wake))

    async def admit_with_retry(
        self,
        user_id: str,
        *,
        auto_provision: bool = False,
        auto_wake: bool = False,
        deadline: float = 30.0,
        on_retry: Optional[RetryHook] = None,
    ) -> AdmitResult:
        """See :meth:`Client.admit_with_retry`."""
        end = _deadline_of(deadline)
        call = _Calls.admit(user_id, auto_provision, auto_wake)
        attempt = 0
        while True:
            try:
                return await self._send(call, _http.attempt_timeout(self.timeout, end - time.monotonic()))
            except BapEngineError as err:
                delay = _http.retry_delay(err, attempt, end - time.monotonic())
                if delay is None:
                    raise
                if on_retry is not None:
                    on_retry(err, delay)
                await _async_sleep(delay)
                attempt += 1

    async def engine_for(
        self, user_id: str, *, deadline: float = 30.0, on_retry: Optional[RetryHook] = None
    ) -> AsyncEngineClient:
        """See :meth:`Client.engine_for`; the engine client is an :class:`AsyncEngineClient`."""
        res = await self.admit_with_retry(
            user_id, auto_provision=True, auto_wake=True, deadline=deadline, on_retry=on_retry
        )
        if not res.admitted or res.engine is None:
            raise AdmissionDenied(res.reason or "")
        return AsyncEngineClient.from_engine(res.engine, http_client=self._http)

    async def list_engines(
        self, status: Optional[str] = None, limit: Optional[int] = None, offset: Optional[int] = None
    ) -> EngineList:
        """See :meth:`Client.list_engines`."""
        return await self._send(_Calls.list_engines(status, limit, offset))

    async def audit(self, user_id: str, limit: Optional[int] = None, offset: Optional[int] = None) -> AuditPage:
        """See :meth:`Client.audit`."""
        return await self._send(_Calls.audit(user_id, limit, offset))

    async def status(self) -> FleetStatus:
        """See :meth:`Client.status`."""
        return await self._send(Call("GET", "/status", PLATFORM, _http.json_of(FleetStatus.from_json)))

    async def metrics(self) -> FleetMetrics:
        """See :meth:`Client.metrics`."""
        return await self._send(Call("GET", "/metrics", PLATFORM, _http.json_of(FleetMetrics.from_json)))

    async def register_product(
        self, slug: str, display_name: str, policy: Optional[Dict[str, Any]] = None
    ) -> ProductRegistration:
        """See :meth:`Client.register_product`."""
        return await self._send(_Calls.register_product(slug, display_name, policy))

    async def update_policy(self, product_id: str, policy: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """See :meth:`Client.update_policy`."""
        return await self._send(_Calls.update_policy(product_id, policy))

    async def rotate_platform_key(self, product_id: str) -> PlatformKeyRotation:
        """See :meth:`Client.rotate_platform_key`."""
        return await self._send(_Calls.rotate_platform_key(product_id))

    async def health(self) -> Health:
        """See :meth:`Client.health`."""
        return await self._send(Call("GET", "/health", None, _http.json_of(Health.from_json)))

    async def prometheus_metrics(self) -> str:
        """See :meth:`Client.prometheus_metrics`."""
        return await self._send(Call("GET", "/metrics/prometheus", ADMIN, _http.text))

    async def openapi(self) -> Dict[str, Any]:
        """See :meth:`Client.openapi`."""
        return await self._send(Call("GET", "/openapi.json", None, _http.json_object))
