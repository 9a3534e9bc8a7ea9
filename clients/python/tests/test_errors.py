"""Error mapping: every documented code becomes its exception class with
code, message, status and retry_after — produced by a real orchestrator
wherever a test can make it answer so, and for every code through a
transport that answers as the orchestrator does."""

from __future__ import annotations

import asyncio
import uuid
from typing import Callable, Type

import httpx
import pytest

from bap_engine_client import (
    ERRORS_BY_CODE,
    ApiError,
    AsyncClient,
    BackendFailureError,
    AuthenticationError,
    BapEngineError,
    BootTimeoutError,
    CapacityError,
    Client,
    ConflictError,
    EngineAlreadyExistsError,
    EngineAlreadyRunningError,
    EngineNotFoundError,
    EngineNotRunningError,
    InvalidAdminKeyError,
    InvalidPlatformKeyError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    PortExhaustionError,
    ProductNotFoundError,
    ProductSlugExistsError,
    QuotaExceededError,
    RateLimitedError,
    RouteNotFoundError,
    TransportError,
    UnavailableError,
    ValidationError,
)
from bap_engine_client._http import Call, json_object

from conftest import Orchestrator, Product, free_port

#: The HTTP status of each documented code (SPEC §2 and the server's table).
STATUS_OF = {
    "ENGINE_NOT_FOUND": 404,
    "ENGINE_ALREADY_EXISTS": 409,
    "ENGINE_ALREADY_RUNNING": 409,
    "ENGINE_NOT_RUNNING": 409,
    "ENGINE_BUSY": 409,
    "QUOTA_EXCEEDED": 429,
    "RATE_LIMITED": 429,
    "PORT_EXHAUSTION": 503,
    "BOOT_TIMEOUT": 504,
    "IMAGE_NOT_FOUND": 502,
    "BACKEND_UNAVAILABLE": 503,
    "BACKEND_ERROR": 502,
    "DATABASE_UNAVAILABLE": 503,
    "INVALID_PLATFORM_KEY": 401,
    "INVALID_ADMIN_KEY": 401,
    "PRODUCT_SLUG_EXISTS": 409,
    "PRODUCT_NOT_FOUND": 404,
    "VALIDATION_ERROR": 422,
    "PAYLOAD_TOO_LARGE": 413,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "INTERNAL": 500,
    "UPGRADE_FAILED": 502,
    "ROLLOUT_IN_PROGRESS": 409,
    "ROLLOUT_NOT_FOUND": 404,
}

RETRYABLE = {"RATE_LIMITED", "ENGINE_BUSY", "DATABASE_UNAVAILABLE", "BACKEND_UNAVAILABLE"}


def raises(cls: Type[ApiError], code: str, fn: Callable[[], object]) -> ApiError:
    """Run fn, which must raise cls with code and its documented status."""
    with pytest.raises(cls) as info:
        fn()
    err = info.value
    assert (err.code, err.status) == (code, STATUS_OF[code])
    assert err.message and code in str(err)
    assert err.retryable == (code in RETRYABLE)
    return err


def test_the_client_knows_every_code_the_server_documents(orch: Orchestrator) -> None:
    doc = Client(orch.url).openapi()
    codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    assert set(codes) == set(ERRORS_BY_CODE) == set(STATUS_OF)


def test_real_answers_map_to_their_exceptions(orch: Orchestrator, product: Product) -> None:
    c, admin = product.client, orch.admin()
    raises(InvalidPlatformKeyError, "INVALID_PLATFORM_KEY", Client(orch.url, platform_key="pk-sept-nope").status)
    raises(InvalidPlatformKeyError, "INVALID_PLATFORM_KEY", lambda: Client(orch.url).admit("x"))
    raises(InvalidAdminKeyError, "INVALID_ADMIN_KEY", lambda: Client(orch.url, admin_key="nope").register_product("s", "S"))
    raises(EngineNotFoundError, "ENGINE_NOT_FOUND", lambda: c.get("nobody"))
    raises(EngineNotFoundError, "ENGINE_NOT_FOUND", lambda: c.destroy("nobody"))
    raises(ProductNotFoundError, "PRODUCT_NOT_FOUND", lambda: admin.update_policy(str(uuid.uuid4()), {}))
    raises(ProductNotFoundError, "PRODUCT_NOT_FOUND", lambda: admin.rotate_platform_key("not-a-product"))
    raises(ProductSlugExistsError, "PRODUCT_SLUG_EXISTS", lambda: admin.register_product(product.registration.slug, "Again"))
    raises(ValidationError, "VALIDATION_ERROR", lambda: c.get("../etc"))
    raises(ValidationError, "VALIDATION_ERROR", lambda: c.provision("has space"))
    raises(ValidationError, "VALIDATION_ERROR", lambda: c.list_engines(limit=5000))
    raises(ValidationError, "VALIDATION_ERROR", lambda: admin.update_policy(product.product_id, {"max_engines": -1}))
    raises(PayloadTooLargeError, "PAYLOAD_TOO_LARGE", lambda: c.provision("x" * 2_000_000))

    c.provision("gina")
    raises(EngineAlreadyExistsError, "ENGINE_ALREADY_EXISTS", lambda: c.provision("gina"))
    raises(EngineAlreadyRunningError, "ENGINE_ALREADY_RUNNING", lambda: c.start("gina"))
    c.stop("gina")
    raises(EngineNotRunningError, "ENGINE_NOT_RUNNING", lambda: c.stop("gina"))
    raises(EngineNotRunningError, "ENGINE_NOT_RUNNING", lambda: c.rotate_key("gina"))

    # Routes this client has no method for: the orchestrator's own answers.
    raises(RouteNotFoundError, "NOT_FOUND", lambda: c._send(Call("GET", "/no/such/route", None, json_object)))
    raises(MethodNotAllowedError, "METHOD_NOT_ALLOWED", lambda: c._send(Call("PATCH", "/engines/provision", "platform", json_object)))


def test_quota_and_rate_limit(orch: Orchestrator) -> None:
    p = orch.product({"max_engines": 1})
    try:
        p.client.provision("one")
        raises(QuotaExceededError, "QUOTA_EXCEEDED", lambda: p.client.provision("two"))
        err = raises(QuotaExceededError, "QUOTA_EXCEEDED", lambda: p.client.admit("two", auto_provision=True))
        assert err.retry_after is None, "a quota is not waited out"
        assert p.client.list_engines().total == 1, "a refused provision leaves nothing behind"
    finally:
        p.client.destroy("one")

    limited = orch.product({"rate_limit_rpm": 2})
    try:
        assert limited.client.admit("x", auto_provision=True).admitted
        assert limited.client.admit("x").admitted
        err = raises(RateLimitedError, "RATE_LIMITED", lambda: limited.client.admit("x"))
        assert err.retry_after is not None and 1 <= err.retry_after <= 60
    finally:
        limited.client.destroy("x")


def test_boot_timeout_and_port_exhaustion(tight_orch: Orchestrator) -> None:
    c = tight_orch.product().client
    err = raises(BootTimeoutError, "BOOT_TIMEOUT", lambda: c.provision("slow"))
    assert "1s" in err.message
    assert c.get("slow").status == "failed"
    assert c.admit("slow", auto_wake=True).reason == "engine_unhealthy"
    raises(PortExhaustionError, "PORT_EXHAUSTION", lambda: c.provision("next"))
    raises(PortExhaustionError, "PORT_EXHAUSTION", lambda: c.admit("next", auto_provision=True))


@pytest.mark.parametrize("code", sorted(STATUS_OF))
def test_every_code_maps_to_its_class_sync_and_async(code: str) -> None:
    status = STATUS_OF[code]
    headers = {"Retry-After": "17"} if code == "RATE_LIMITED" else {}

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, json={"error": {"code": code, "message": f"about {code}"}})

    def check(err: BapEngineError) -> None:
        assert type(err) is ERRORS_BY_CODE[code]
        assert (err.code, err.status, err.message) == (code, status, f"about {code}")
        assert err.retry_after == (17.0 if code == "RATE_LIMITED" else None)
        assert err.retryable == (code in RETRYABLE)

    sync = Client("http://bap.test", platform_key="k", http_client=httpx.Client(transport=httpx.MockTransport(answer)))
    with pytest.raises(ApiError) as info:
        sync.admit("u")
    check(info.value)

    async def run() -> None:
        transport = httpx.MockTransport(answer)
        async with httpx.AsyncClient(transport=transport) as http:
            with pytest.raises(ApiError) as info:
                await AsyncClient("http://bap.test", platform_key="k", http_client=http).admit("u")
            check(info.value)

    asyncio.run(run())


def test_classes_group_codes_by_what_to_do() -> None:
    groups = {
        AuthenticationError: {"INVALID_PLATFORM_KEY", "INVALID_ADMIN_KEY"},
        NotFoundError: {"ENGINE_NOT_FOUND", "PRODUCT_NOT_FOUND", "NOT_FOUND", "ROLLOUT_NOT_FOUND"},
        ConflictError: {
            "ENGINE_ALREADY_EXISTS",
            "ENGINE_ALREADY_RUNNING",
            "ENGINE_NOT_RUNNING",
            "ENGINE_BUSY",
            "PRODUCT_SLUG_EXISTS",
            "ROLLOUT_IN_PROGRESS",
        },
        InvalidRequestError: {"VALIDATION_ERROR", "PAYLOAD_TOO_LARGE", "METHOD_NOT_ALLOWED"},
        CapacityError: {"QUOTA_EXCEEDED", "PORT_EXHAUSTION"},
        UnavailableError: {"DATABASE_UNAVAILABLE", "BACKEND_UNAVAILABLE"},
        BackendFailureError: {"BOOT_TIMEOUT", "IMAGE_NOT_FOUND", "BACKEND_ERROR", "UPGRADE_FAILED"},
    }
    for base, codes in groups.items():
        assert {c for c, cls in ERRORS_BY_CODE.items() if issubclass(cls, base)} == codes, base.__name__


def test_answers_that_are_not_the_envelope() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/status":
            return httpx.Response(502, text="<html>bad gateway</html>")
        if request.url.path == "/metrics":
            return httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"})
        return httpx.Response(418, json={"detail": "teapot"})

    c = Client("http://bap.test", platform_key="k", http_client=httpx.Client(transport=httpx.MockTransport(answer)))
    with pytest.raises(UnavailableError) as info:
        c.status()
    assert (info.value.code, info.value.status, info.value.message) == (None, 502, "<html>bad gateway</html>")
    assert info.value.retryable, "a proxy's 502 while the orchestrator restarts is worth a retry"
    with pytest.raises(UnavailableError) as info:
        c.metrics()
    assert info.value.retry_after is not None and info.value.retry_after > 1e9 / 2, "an HTTP date is read"
    with pytest.raises(ApiError) as other:
        c.health()
    assert type(other.value) is ApiError and other.value.status == 418 and not other.value.retryable


def test_a_success_body_that_is_not_json_is_an_error() -> None:
    c = Client("http://bap.test", http_client=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, text="{"))))
    with pytest.raises(BapEngineError, match="GET /health: unreadable answer"):
        c.health()


def test_no_answer_is_a_transport_error() -> None:
    c = Client(f"http://127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(TransportError) as info:
        c.health()
    err = info.value
    assert (err.code, err.status, err.retry_after) == (None, None, None)
    assert err.retryable and isinstance(err.__cause__, httpx.HTTPError)
