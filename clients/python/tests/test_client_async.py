"""Every method of AsyncClient against a real orchestrator (each test runs
its coroutine with asyncio.run: no plugin needed)."""

from __future__ import annotations

import asyncio
import inspect
import time

import pytest

from bap_engine_client import (
    AdmitResult,
    AsyncClient,
    AsyncEngineClient,
    Client,
    EngineAlreadyExistsError,
    EngineNotFoundError,
    InvalidAdminKeyError,
)

from conftest import Orchestrator, Product


def public_methods(cls: type) -> set:
    return {n for n, v in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


def test_async_client_has_every_method_of_the_sync_one() -> None:
    sync, aio = public_methods(Client), public_methods(AsyncClient)
    assert sync - {"close"} == aio - {"aclose"}
    for name in aio - {"aclose"}:
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name
        assert getattr(AsyncClient, name).__doc__, f"{name} has a docstring"


def test_async_engine_lifecycle(orch: Orchestrator) -> None:
    async def scenario() -> None:
        async with AsyncClient(orch.url, admin_key=orch.admin_key) as admin:
            assert (await admin.health()).status == "ok"
            assert "/engines/provision" in (await admin.openapi())["paths"]
            reg = await admin.register_product("async-" + str(time.monotonic_ns()), "Async")
            assert await admin.update_policy(reg.product_id, {"max_engines": 10}) == {"max_engines": 10}
            rot = await admin.rotate_platform_key(reg.product_id)
            assert rot.product_id == reg.product_id
            async with AsyncClient(orch.url, admin_key="wrong") as wrong:
                with pytest.raises(InvalidAdminKeyError):
                    await wrong.register_product("x", "X")

        async with AsyncClient(orch.url, platform_key=rot.platform_api_key) as c:
            p = await c.provision("amy")
            assert p.status == "running"
            with pytest.raises(EngineAlreadyExistsError):
                await c.provision("amy")
            assert (await c.get("amy")).api_key == p.api_key
            assert (await c.stop("amy")).status == "stopped"
            assert await c.admit("amy") == AdmitResult(admitted=False, reason="engine_stopped")
            assert (await c.start("amy")).url == p.url
            rotated = await c.rotate_key("amy")
            assert rotated.api_key != p.api_key
            adm = await c.admit("amy")
            assert adm.admitted and adm.engine is not None and adm.engine.api_key == rotated.api_key

            page = await c.list_engines(status="running")
            assert [e.user_id for e in page.engines] == ["amy"] and page.total == 1
            # provision, stop, admit_denied, start, rotate_key
            audit = await c.audit("amy", limit=2)
            assert audit.total == 5 and [e.action for e in audit.entries] == ["rotate_key", "start"]
            st = await c.status()
            assert st.total == 1 and st.by_status["running"] == 1
            assert (await c.metrics()).total_provisions == 1

            assert (await c.destroy("amy")).engine_id == p.engine_id
            with pytest.raises(EngineNotFoundError):
                await c.get("amy")

        async with AsyncClient(orch.url, admin_key=orch.admin_key) as admin:
            assert reg.slug in await admin.prometheus_metrics()

    asyncio.run(scenario())


def test_async_admits_concurrently_into_one_engine(product: Product, orch: Orchestrator) -> None:
    """Twenty concurrent admits with auto_provision for a new user get the
    same single engine (the orchestrator joins them)."""
    key = product.client.platform_key

    async def scenario() -> None:
        async with AsyncClient(orch.url, platform_key=key) as c:
            results = await asyncio.gather(
                *(c.admit_with_retry("crowd", auto_provision=True, deadline=60) for _ in range(20))
            )
            ids = {r.engine.engine_id for r in results if r.engine is not None}
            assert all(r.admitted for r in results) and len(ids) == 1
            engine = await c.engine_for("crowd")
            assert isinstance(engine, AsyncEngineClient)
            assert (await engine.execute("hi"))["output"] == "Noted #1: hi"
            assert (await engine.health())["status"] == "ok"

    asyncio.run(scenario())
    assert product.client.list_engines().total == 1
