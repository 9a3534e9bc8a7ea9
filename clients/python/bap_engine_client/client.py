"""The orchestrator clients: :class:`Client` (blocking) and
:class:`AsyncClient` (asyncio), with the same methods.

A product keeps one client for its lifetime (it holds a connection pool) and
calls :meth:`Client.admit_with_retry` (or :meth:`Client.engine_for`) on every
user request, then talks to the engine directly.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, List, Optional, TypeVar

import httpx

from . import _http
from ._http import ADMIN, PLATFORM, Call
from .engine import AsyncEngineClient, EngineClient
from .errors import AdmissionDenied, BapEngineError
from .logs import AsyncLogStream, LogStream
from .types import (
    AdmitResult,
    AuditPage,
    Destroyed,
    EngineInfo,
    EngineList,
    FleetEngineList,
    FleetMetrics,
    FleetStatus,
    Health,
    KeyRotated,
    PlatformKeyRotation,
    ProductInfo,
    ProductList,
    ProductRegistration,
    Provisioned,
    ReplicaList,
    Rollout,
    RolloutList,
    Started,
    Stopped,
    Upgraded,
    Version,
)

__all__ = ["Client", "AsyncClient", "DEFAULT_TIMEOUT", "UPGRADE_TIMEOUT", "ROLLOUT_ACTIONS", "RetryHook"]

#: Seconds one orchestrator call may take. A provision or an admit that
#: provisions waits for the engine to boot (ORCH_BOOT_TIMEOUT_S, 60 s by
#: default), so this is longer than that.
DEFAULT_TIMEOUT = 90.0

#: Seconds an upgrade may take by default: it waits for the new version's
#: boot and, when that fails, for the rollback's (twice ORCH_BOOT_TIMEOUT_S
#: and the snapshot copies).
UPGRADE_TIMEOUT = 300.0

#: The rollout actions of :meth:`Client.rollout_action`.
ROLLOUT_ACTIONS = ("pause", "resume", "abort")

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

    @staticmethod
    def upgrade(user_id: str, engine_version: str) -> Call[Upgraded]:
        body = {"engine_version": engine_version}
        return Call("POST", _http.engine_path(user_id, "upgrade"), PLATFORM, _http.json_of(Upgraded.from_json), body)

    @staticmethod
    def logs(user_id: str, tail: Optional[int], follow: bool) -> Call[List[str]]:
        params = _http.page_params(tail=tail, follow="true" if follow else None)
        return Call("GET", _http.engine_path(user_id, "logs"), PLATFORM, _http.lines, params=params)

    @staticmethod
    def products() -> Call[ProductList]:
        return Call("GET", "/products", ADMIN, _http.json_of(ProductList.from_json))

    @staticmethod
    def product(product: str) -> Call[ProductInfo]:
        return Call("GET", _http.product_path(product), ADMIN, _http.json_of(ProductInfo.from_json))

    @staticmethod
    def fleet_engines(
        product: Optional[str], status: Optional[str], user_id: Optional[str], limit: Optional[int], offset: Optional[int]
    ) -> Call[FleetEngineList]:
        params = _http.page_params(product=product, status=status, user_id=user_id, limit=limit, offset=offset)
        return Call("GET", "/fleet/engines", ADMIN, _http.json_of(FleetEngineList.from_json), params=params)

    @staticmethod
    def create_rollout(
        product: str, engine_version: str, percent: int, max_parallel: Optional[int], max_failures: Optional[int]
    ) -> Call[Rollout]:
        body: Dict[str, Any] = {"engine_version": engine_version, "percent": percent}
        if max_parallel is not None:
            body["max_parallel"] = max_parallel
        if max_failures is not None:
            body["max_failures"] = max_failures
        return Call("POST", _http.rollout_path(product), ADMIN, _http.json_of(Rollout.from_json), body)

    @staticmethod
    def rollouts(product: str) -> Call[RolloutList]:
        return Call("GET", _http.rollout_path(product), ADMIN, _http.json_of(RolloutList.from_json))

    @staticmethod
    def rollout(product: str, rollout_id: str) -> Call[Rollout]:
        return Call("GET", _http.rollout_path(product, rollout_id), ADMIN, _http.json_of(Rollout.from_json))

    @staticmethod
    def set_rollout_percent(product: str, rollout_id: str, percent: int) -> Call[Rollout]:
        path = _http.rollout_path(product, rollout_id)
        return Call("PATCH", path, ADMIN, _http.json_of(Rollout.from_json), {"percent": percent})

    @staticmethod
    def rollout_action(product: str, rollout_id: str, action: str) -> Call[Rollout]:
        if action not in ROLLOUT_ACTIONS:
            raise ValueError(f"rollout action must be one of {', '.join(ROLLOUT_ACTIONS)}, not {action!r}")
        path = _http.rollout_path(product, rollout_id, action)
        return Call("POST", path, ADMIN, _http.json_of(Rollout.from_json))

    # The calls that need no argument.
    STATUS = Call("GET", "/status", PLATFORM, _http.json_of(FleetStatus.from_json))
    METRICS = Call("GET", "/metrics", PLATFORM, _http.json_of(FleetMetrics.from_json))
    HEALTH = Call("GET", "/health", None, _http.json_of(Health.from_json))
    LIVEZ = Call("GET", "/livez", None, _http.json_of(Health.from_json))
    READYZ = Call("GET", "/readyz", None, _http.json_of(Health.from_json))
    VERSION = Call("GET", "/version", None, _http.json_of(Version.from_json))
    REPLICAS = Call("GET", "/replicas", ADMIN, _http.json_of(ReplicaList.from_json))
    PROMETHEUS = Call("GET", "/metrics/prometheus", ADMIN, _http.text)
    OPENAPI = Call("GET", "/openapi.json", None, _http.json_object)


def _admitted(res: AdmitResult) -> EngineInfo:
    """The engine of an admit with auto-provision and auto-wake; its denial
    (``engine_unhealthy``, ``engine_busy``) is raised as AdmissionDenied."""
    if not res.admitted or res.engine is None:
        raise AdmissionDenied(res.reason or "")
    return res.engine


class _Base:
    """Configuration both clients share."""

    def __init__(
        self,
        base_url: str,
        platform_key: Optional[str],
        admin_key: Optional[str],
        timeout: Optional[float],
        http: Any,
        own_http: Callable[[], Any],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.platform_key = platform_key
        self.admin_key = admin_key
        self.timeout = timeout
        self._owns_http = http is None
        self._http = own_http() if http is None else http

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

    def _follow_args(self, call: Call[Any], timeout: Optional[float]) -> Dict[str, Any]:
        # A followed log may stay quiet for long: only connecting (and
        # writing the request) is bounded, unless the caller bounds reads.
        bound = self.timeout if timeout is None else timeout
        return self._request_args(call, httpx.Timeout(bound, read=timeout))

    @staticmethod
    def _decode(call: Call[T], response: httpx.Response) -> T:
        try:
            return call.decode(response)
        except (ValueError, KeyError, TypeError) as err:
            raise _http.decode_failed(call.name, err) from err


class Client(_Base, _http.Pool):
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
        super().__init__(base_url, platform_key, admin_key, timeout, http_client, httpx.Client)

    def _send(self, call: Call[T], timeout: Optional[float] = None) -> T:
        args = self._request_args(call, self.timeout if timeout is None else timeout)
        with _http.transport_errors(call.name), self._http.stream(**args) as response:
            if not response.is_success:
                raise _http.api_error(response, _http.read_error_body(response))
            response.read()
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
        retries = _http.Retries(deadline, self.timeout, on_retry)
        call = _Calls.admit(user_id, auto_provision, auto_wake)
        while True:
            try:
                return self._send(call, retries.timeout())
            except BapEngineError as err:
                _sleep(retries.wait_after(err))

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
        return EngineClient.from_engine(_admitted(res), http_client=self._http)

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

    def upgrade(self, user_id: str, engine_version: str, *, timeout: Optional[float] = UPGRADE_TIMEOUT) -> Upgraded:
        """Move the user's engine to ``engine_version`` on the same brain, key
        and URL, and wait for the outcome.

        The brain is snapshotted first; a running or sleeping engine ends
        running, a stopped one stopped. If the new version does not become
        healthy in time the upgrade is rolled back (the engine is on its old
        version with its brain as it was) and UpgradeFailedError is raised,
        its message carrying the engine's reason. While it runs, :meth:`get`
        shows ``operation.phase``. ``timeout`` bounds the call (default
        :data:`UPGRADE_TIMEOUT`; ``None``: the client's own). Raises EngineNotFoundError,
        EngineBusyError, EngineNotRunningError, UpgradeFailedError,
        ImageNotFoundError, ValidationError.
        """
        return self._send(_Calls.upgrade(user_id, engine_version), timeout)

    def logs(self, user_id: str, tail: Optional[int] = None) -> List[str]:
        """The engine's own output (stdout and stderr): its last ``tail``
        lines (``None``: the server's default, 200; ``0``: everything kept),
        without line ends. Raises EngineNotFoundError, ValidationError,
        BackendUnavailableError.
        """
        return self._send(_Calls.logs(user_id, tail, False))

    def follow_logs(
        self, user_id: str, tail: Optional[int] = None, *, timeout: Optional[float] = None
    ) -> LogStream:
        """The engine's output as it writes it: the last ``tail`` lines, then
        every new line, as an open :class:`~bap_engine_client.logs.LogStream`
        to iterate and close (``with client.follow_logs("alice") as lines``).

        The request is made here, so an error is raised before the first
        line (the errors of :meth:`logs`). ``timeout`` bounds connecting and
        each wait for more output; ``None`` (the default) waits for output
        as long as the stream is open.
        """
        call = _Calls.logs(user_id, tail, True)
        return LogStream._open(self._http, self._follow_args(call, timeout), call.name, _http.api_error)

    # Fleet.

    def status(self) -> FleetStatus:
        """The product's engines by state and their health."""
        return self._send(_Calls.STATUS)

    def metrics(self) -> FleetMetrics:
        """The product's provisions, crashes, restarts and boot time (last hour, all time)."""
        return self._send(_Calls.METRICS)

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

    def list_products(self) -> ProductList:
        """Every product, ordered by slug, with its engines counted by state
        (admin key; never a product's key). Raises InvalidAdminKeyError."""
        return self._send(_Calls.products())

    def get_product(self, product: str) -> ProductInfo:
        """One product by id or slug (admin key). Raises
        InvalidAdminKeyError, ProductNotFoundError."""
        return self._send(_Calls.product(product))

    def fleet_engines(
        self,
        *,
        product: Optional[str] = None,
        status: Optional[str] = None,
        user_id: Optional[str] = None,
        limit: Optional[int] = None,
        offset: Optional[int] = None,
    ) -> FleetEngineList:
        """One page of the engines of every product (admin key, no engine
        keys), ordered by creation.

        ``product`` (id or slug) and ``status`` filter exactly; ``user_id``
        selects the user ids containing it, ignoring case; ``limit`` is 1 to
        1000 (server default 100). Raises InvalidAdminKeyError,
        ProductNotFoundError (``product`` names none), ValidationError.
        """
        return self._send(_Calls.fleet_engines(product, status, user_id, limit, offset))

    def replicas(self) -> ReplicaList:
        """The orchestrator processes sharing the database (admin key)."""
        return self._send(_Calls.REPLICAS)

    # Rollouts (admin key; ``product`` is the product's id or slug).

    def create_rollout(
        self,
        product: str,
        engine_version: str,
        percent: int,
        *,
        max_parallel: Optional[int] = None,
        max_failures: Optional[int] = None,
    ) -> Rollout:
        """Start upgrading ``percent`` (1 to 100) of the product's engines to
        ``engine_version``, ``max_parallel`` at a time (server default 2); the
        rollout pauses itself after ``max_failures`` rolled-back upgrades
        (default 1). Raises RolloutInProgressError (one is running or
        paused), ProductNotFoundError, ValidationError.
        """
        return self._send(_Calls.create_rollout(product, engine_version, percent, max_parallel, max_failures))

    def list_rollouts(self, product: str) -> RolloutList:
        """The product's rollouts, newest first. Raises ProductNotFoundError."""
        return self._send(_Calls.rollouts(product))

    def get_rollout(self, product: str, rollout_id: str) -> Rollout:
        """One rollout with its counts. Raises RolloutNotFoundError, ProductNotFoundError."""
        return self._send(_Calls.rollout(product, rollout_id))

    def set_rollout_percent(self, product: str, rollout_id: str, percent: int) -> Rollout:
        """Raise a rollout's percent: the same order of engines is extended
        and a done rollout runs again. Lowering it, or changing an aborted
        one, raises ValidationError; also RolloutNotFoundError."""
        return self._send(_Calls.set_rollout_percent(product, rollout_id, percent))

    def pause_rollout(self, product: str, rollout_id: str) -> Rollout:
        """Pause a running rollout (upgrades in flight finish). Raises
        ValidationError when it is done or aborted, RolloutNotFoundError."""
        return self._send(_Calls.rollout_action(product, rollout_id, "pause"))

    def resume_rollout(self, product: str, rollout_id: str) -> Rollout:
        """Resume a paused rollout (also one that paused itself after
        failures; its reason is cleared). Raises ValidationError when it is
        done or aborted, RolloutNotFoundError."""
        return self._send(_Calls.rollout_action(product, rollout_id, "resume"))

    def abort_rollout(self, product: str, rollout_id: str) -> Rollout:
        """Abort a rollout for good (engines already upgraded stay so).
        Raises ValidationError when it is done or aborted, RolloutNotFoundError."""
        return self._send(_Calls.rollout_action(product, rollout_id, "abort"))

    # The orchestrator itself.

    def health(self) -> Health:
        """The orchestrator's health (no key). Raises an ApiError with status
        503 when its database is unreachable."""
        return self._send(_Calls.HEALTH)

    def prometheus_metrics(self) -> str:
        """The fleet-wide Prometheus text exposition (admin key)."""
        return self._send(_Calls.PROMETHEUS)

    def openapi(self) -> Dict[str, Any]:
        """The orchestrator's OpenAPI 3.1 document."""
        return self._send(_Calls.OPENAPI)

    def version(self) -> Version:
        """The orchestrator's build: version, commit, Go version (no key).
        Answered even while the orchestrator waits for its database."""
        return self._send(_Calls.VERSION)

    def livez(self) -> Health:
        """Liveness (no key): the process serves HTTP; checks nothing else."""
        return self._send(_Calls.LIVEZ)

    def readyz(self) -> Health:
        """Readiness (no key): the database and the engine backend are
        reachable. Raises DatabaseUnavailableError or BackendUnavailableError
        (503) when not."""
        return self._send(_Calls.READYZ)


class AsyncClient(_Base, _http.AsyncPool):
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
        super().__init__(base_url, platform_key, admin_key, timeout, http_client, httpx.AsyncClient)

    async def _send(self, call: Call[T], timeout: Optional[float] = None) -> T:
        args = self._request_args(call, self.timeout if timeout is None else timeout)
        with _http.transport_errors(call.name):
            async with self._http.stream(**args) as response:
                if not response.is_success:
                    raise _http.api_error(response, await _http.aread_error_body(response))
                await response.aread()
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
        retries = _http.Retries(deadline, self.timeout, on_retry)
        call = _Calls.admit(user_id, auto_provision, auto_wake)
        while True:
            try:
                return await self._send(call, retries.timeout())
            except BapEngineError as err:
                await _async_sleep(retries.wait_after(err))

    async def engine_for(
        self, user_id: str, *, deadline: float = 30.0, on_retry: Optional[RetryHook] = None
    ) -> AsyncEngineClient:
        """See :meth:`Client.engine_for`; the engine client is an :class:`AsyncEngineClient`."""
        res = await self.admit_with_retry(
            user_id, auto_provision=True, auto_wake=True, deadline=deadline, on_retry=on_retry
        )
        return AsyncEngineClient.from_engine(_admitted(res), http_client=self._http)

    async def list_engines(
        self, status: Optional[str] = None, limit: Optional[int] = None, offset: Optional[int] = None
    ) -> EngineList:
        """See :meth:`Client.list_engines`."""
        return await self._send(_Calls.list_engines(status, limit, offset))

    async def audit(self, user_id: str, limit: Optional[int] = None, offset: Optional[int] = None) -> AuditPage:
        """See :meth:`Client.audit`."""
        return await self._send(_Calls.audit(user_id, limit, offset))

    async def upgrade(
        self, user_id: str, engine_version: str, *, timeout: Optional[float] = UPGRADE_TIMEOUT
    ) -> Upgraded:
        """See :meth:`Client.upgrade`."""
        return await self._send(_Calls.upgrade(user_id, engine_version), timeout)

    async def logs(self, user_id: str, tail: Optional[int] = None) -> List[str]:
        """See :meth:`Client.logs`."""
        return await self._send(_Calls.logs(user_id, tail, False))

    async def follow_logs(
        self, user_id: str, tail: Optional[int] = None, *, timeout: Optional[float] = None
    ) -> AsyncLogStream:
        """See :meth:`Client.follow_logs`; returns an open
        :class:`~bap_engine_client.logs.AsyncLogStream` (``async for``)."""
        call = _Calls.logs(user_id, tail, True)
        return await AsyncLogStream._open(self._http, self._follow_args(call, timeout), call.name, _http.api_error)

    async def status(self) -> FleetStatus:
        """See :meth:`Client.status`."""
        return await self._send(_Calls.STATUS)

    async def metrics(self) -> FleetMetrics:
        """See :meth:`Client.metrics`."""
        return await self._send(_Calls.METRICS)

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

    async def list_products(self) -> ProductList:
        """See :meth:`Client.list_products`."""
        return await self._send(_Calls.products())

    async def get_product(self, product: str) -> ProductInfo:
        """See :meth:`Client.get_product`."""
        return await self._send(_Calls.product(product))

    async def fleet_engines(
        self,
        *,
        product: Optional[str] = None,
        status: Optional[str] = None,
        user_id: Optional[str] = None,
        limit: Optional[int] = None,
        offset: Optional[int] = None,
    ) -> FleetEngineList:
        """See :meth:`Client.fleet_engines`."""
        return await self._send(_Calls.fleet_engines(product, status, user_id, limit, offset))

    async def replicas(self) -> ReplicaList:
        """See :meth:`Client.replicas`."""
        return await self._send(_Calls.REPLICAS)

    async def create_rollout(
        self,
        product: str,
        engine_version: str,
        percent: int,
        *,
        max_parallel: Optional[int] = None,
        max_failures: Optional[int] = None,
    ) -> Rollout:
        """See :meth:`Client.create_rollout`."""
        return await self._send(_Calls.create_rollout(product, engine_version, percent, max_parallel, max_failures))

    async def list_rollouts(self, product: str) -> RolloutList:
        """See :meth:`Client.list_rollouts`."""
        return await self._send(_Calls.rollouts(product))

    async def get_rollout(self, product: str, rollout_id: str) -> Rollout:
        """See :meth:`Client.get_rollout`."""
        return await self._send(_Calls.rollout(product, rollout_id))

    async def set_rollout_percent(self, product: str, rollout_id: str, percent: int) -> Rollout:
        """See :meth:`Client.set_rollout_percent`."""
        return await self._send(_Calls.set_rollout_percent(product, rollout_id, percent))

    async def pause_rollout(self, product: str, rollout_id: str) -> Rollout:
        """See :meth:`Client.pause_rollout`."""
        return await self._send(_Calls.rollout_action(product, rollout_id, "pause"))

    async def resume_rollout(self, product: str, rollout_id: str) -> Rollout:
        """See :meth:`Client.resume_rollout`."""
        return await self._send(_Calls.rollout_action(product, rollout_id, "resume"))

    async def abort_rollout(self, product: str, rollout_id: str) -> Rollout:
        """See :meth:`Client.abort_rollout`."""
        return await self._send(_Calls.rollout_action(product, rollout_id, "abort"))

    async def health(self) -> Health:
        """See :meth:`Client.health`."""
        return await self._send(_Calls.HEALTH)

    async def prometheus_metrics(self) -> str:
        """See :meth:`Client.prometheus_metrics`."""
        return await self._send(_Calls.PROMETHEUS)

    async def openapi(self) -> Dict[str, Any]:
        """See :meth:`Client.openapi`."""
        return await self._send(_Calls.OPENAPI)

    async def version(self) -> Version:
        """See :meth:`Client.version`."""
        return await self._send(_Calls.VERSION)

    async def livez(self) -> Health:
        """See :meth:`Client.livez`."""
        return await self._send(_Calls.LIVEZ)

    async def readyz(self) -> Health:
        """See :meth:`Client.readyz`."""
        return await self._send(_Calls.READYZ)
