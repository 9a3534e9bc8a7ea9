"""The operator surface (SPEC §2) and upgrades and rollouts (SPEC §16),
sync and async, against a real orchestrator: products, the fleet across
products, engine logs (tail and follow), the build and probes, one-engine
upgrades (a success and a rolled-back refusal) and rollouts."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import List, Optional

import httpx
import pytest

from bap_engine_client import (
    OPERATION_PHASES,
    AsyncClient,
    AsyncLogStream,
    Client,
    EngineNotFoundError,
    FleetEngine,
    InvalidAdminKeyError,
    LineDecoder,
    LogStream,
    Operation,
    ProductNotFoundError,
    Rollout,
    RolloutInProgressError,
    RolloutNotFoundError,
    TransportError,
    UpgradeFailedError,
    ValidationError,
)

from conftest import REFUSED_VERSION, Orchestrator, Product, destroy_all, eventually


def poke(url: str, key: str, marker: str) -> None:
    """A keyed request the engine logs (its path carries ``marker``)."""
    httpx.get(f"{url}/{marker}", headers={"X-Engine-Key": key}, timeout=5)


# The build and the probes.


def test_version_and_probes_need_no_key(orch: Orchestrator) -> None:
    with Client(orch.url) as c:
        v = c.version()
        assert v.version and v.commit and v.go.startswith("go")
        assert c.livez().status == "ok"
        assert c.readyz().status == "ok"

    async def run() -> None:
        async with AsyncClient(orch.url) as c:
            assert await c.version() == v
            assert (await c.livez()).status == "ok"
            assert (await c.readyz()).status == "ok"

    asyncio.run(run())


def test_replicas(orch: Orchestrator) -> None:
    reps = orch.admin().replicas().replicas
    assert len(reps) == 1 and reps[0].alive and reps[0].pid > 0 and reps[0].shards > 0
    with pytest.raises(InvalidAdminKeyError):
        Client(orch.url, admin_key="nope").replicas()

    async def run() -> None:
        async with AsyncClient(orch.url, admin_key=orch.admin_key) as c:
            assert [r.replica_id for r in (await c.replicas()).replicas] == [reps[0].replica_id]

    asyncio.run(run())


# Products and the fleet.


def test_products_and_fleet_engines(orch: Orchestrator, product: Product) -> None:
    admin, c, slug = orch.admin(), product.client, product.registration.slug
    for user in ("Fleet-Ann", "fleet-bob", "carl"):
        c.provision(user)
    c.stop("carl")

    listed = admin.list_products()
    assert listed.total == len(listed.products) >= 1
    assert [p.slug for p in listed.products] == sorted(p.slug for p in listed.products), "ordered by slug"
    mine = next(p for p in listed.products if p.slug == slug)
    assert mine.product_id == product.product_id and mine.display_name == f"Product {slug}"
    assert mine.engines_by_status["running"] == 2 and mine.engines_by_status["stopped"] == 1
    assert mine.engines_by_status["failed"] == 0, "every state is named"
    assert admin.get_product(product.product_id) == mine
    assert admin.get_product(slug) == mine, "a product by its slug too"
    with pytest.raises(ProductNotFoundError):
        admin.get_product("no-such-" + uuid.uuid4().hex[:6])
    with pytest.raises(InvalidAdminKeyError):
        Client(orch.url, admin_key="nope").list_products()

    page = admin.fleet_engines(product=slug)
    assert page.total == 3 and len(page.engines) == 3
    e = page.engines[0]
    assert isinstance(e, FleetEngine) and e.product_slug == slug
    assert e.api_key is None, "the fleet view never carries keys"
    assert e.health_failures >= 0 and e.restart_count >= 0
    assert [x.user_id for x in page.engines] == ["Fleet-Ann", "fleet-bob", "carl"], "ordered by creation"

    assert {x.user_id for x in admin.fleet_engines(product=product.product_id, user_id="FLEET").engines} == {
        "Fleet-Ann",
        "fleet-bob",
    }, "user_id matches a part, ignoring case"
    stopped = admin.fleet_engines(product=slug, status="stopped")
    assert (stopped.total, [x.user_id for x in stopped.engines]) == (1, ["carl"])
    one = admin.fleet_engines(product=slug, limit=1, offset=1)
    assert (one.total, [x.user_id for x in one.engines]) == (3, ["fleet-bob"])
    with pytest.raises(ProductNotFoundError):
        admin.fleet_engines(product="no-such-" + uuid.uuid4().hex[:6])
    with pytest.raises(ValidationError):
        admin.fleet_engines(status="asleep")
    with pytest.raises(ValidationError):
        admin.fleet_engines(limit=5000)

    async def run() -> None:
        async with AsyncClient(orch.url, admin_key=orch.admin_key) as a:
            assert await a.get_product(slug) == mine
            assert any(p.slug == slug for p in (await a.list_products()).products)
            got = await a.fleet_engines(product=slug, user_id="carl")
            assert [x.status for x in got.engines] == ["stopped"]
            with pytest.raises(ProductNotFoundError):
                await a.get_product(str(uuid.uuid4()))

    asyncio.run(run())


# Engine logs.


def test_logs_tail_and_follow(product: Product) -> None:
    c = product.client
    eng = c.provision("logan")
    first = eventually(lambda: c.logs("logan"), what="the engine's first log lines")
    assert all(isinstance(line, str) and "\n" not in line for line in first)
    assert any("engine ready" in line for line in first)

    marker = "marker-" + uuid.uuid4().hex[:8]
    poke(eng.url, eng.api_key, marker)
    tail = eventually(lambda: [l for l in c.logs("logan", tail=1) if marker in l], what="the request in the log")
    assert len(tail) == 1
    assert len(c.logs("logan", tail=1)) == 1
    assert len(c.logs("logan", tail=0)) >= 2, "0 is everything kept"
    with pytest.raises(ValidationError):
        c.logs("logan", tail=-1)
    with pytest.raises(EngineNotFoundError):
        c.logs("nobody")
    with pytest.raises(EngineNotFoundError):
        c.follow_logs("nobody")

    # Follow: the stream is open when follow_logs returns, so what the
    # engine writes next arrives on it.
    live = "live-" + uuid.uuid4().hex[:8]
    with c.follow_logs("logan", tail=1, timeout=20) as stream:
        assert isinstance(stream, LogStream)
        poke(eng.url, eng.api_key, live)
        seen: List[str] = []
        for line in stream:
            seen.append(line)
            if live in line:
                break
    assert marker in seen[0], "the tail comes first"
    assert live in seen[-1]


def test_a_followed_log_that_stays_quiet_past_its_timeout_is_a_transport_error(product: Product) -> None:
    c = product.client
    c.provision("quiet")
    eventually(lambda: c.logs("quiet"), what="the engine's first log lines")
    with c.follow_logs("quiet", tail=1, timeout=1.5) as stream:
        with pytest.raises(TransportError):
            for _ in stream:
                pass


def test_async_logs_tail_and_follow(orch: Orchestrator, product: Product) -> None:
    eng = product.client.provision("alogan")
    key = product.client.get("alogan").api_key
    assert key is not None
    marker = "amarker-" + uuid.uuid4().hex[:8]

    async def run() -> None:
        async with AsyncClient(orch.url, platform_key=product.client.platform_key) as c:
            for _ in range(200):
                if any("engine ready" in line for line in await c.logs("alogan", tail=0)):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the engine's first log lines never came")
            with pytest.raises(EngineNotFoundError):
                await c.logs("nobody")
            with pytest.raises(EngineNotFoundError):
                await c.follow_logs("nobody")
            stream = await c.follow_logs("alogan", tail=0, timeout=20)
            assert isinstance(stream, AsyncLogStream)
            async with stream:
                await asyncio.to_thread(poke, eng.url, key, marker)
                got: Optional[str] = None
                async for line in stream:
                    if marker in line:
                        got = line
                        break
            assert got is not None and '"status":404' in got

    asyncio.run(run())


def test_line_decoder_splits_across_chunks() -> None:
    d = LineDecoder()
    assert d.feed(b"one\r\ntw") == ["one"]
    assert d.feed("o\nthr\u00e9".encode()[:-1]) == ["two"]
    assert d.feed("\u00e9".encode()[-1:] + b"e\n\nfour") == ["thr\u00e9e", ""]
    assert d.end() == ["four"]
    assert d.end() == []


# Upgrades.


def test_upgrade_success_rollback_and_phase(upgrade_orch: Orchestrator) -> None:
    p = upgrade_orch.product()
    c = p.client
    try:
        eng = c.provision("uma", engine_version="v1")
        up = c.upgrade("uma", "v2")
        assert (up.engine_id, up.user_id, up.status, up.url) == (eng.engine_id, "uma", "running", eng.url)
        assert (up.engine_version, up.previous_version) == ("v2", "v1")
        got = c.get("uma")
        assert (got.engine_version, got.api_key, got.operation) == ("v2", eng.api_key, None), "same key, nothing in flight"

        # A refused version: the upgrade is rolled back. Meanwhile the
        # engine shows the operation and its phase.
        phases: List[Operation] = []
        failure: List[BaseException] = []

        def refused() -> None:
            try:
                c.upgrade("uma", REFUSED_VERSION)
            except BaseException as err:  # noqa: BLE001 - handed to the test
                failure.append(err)

        t = threading.Thread(target=refused)
        t.start()
        try:
            # The claim is taken a moment before the first phase is named.
            op = eventually(
                lambda: (lambda o: o if o is not None and o.phase else None)(c.get("uma").operation),
                timeout=20,
                what="the upgrade in flight, with its phase",
            )
            phases.append(op)
        finally:
            t.join(60)
        assert not t.is_alive()
        assert phases[0].op == "upgrade" and phases[0].phase in OPERATION_PHASES
        assert len(failure) == 1 and isinstance(failure[0], UpgradeFailedError)
        err = failure[0]
        assert (err.code, err.status) == ("UPGRADE_FAILED", 502)
        assert REFUSED_VERSION in err.message and "rolled back" in err.message
        after = c.get("uma")
        assert (after.engine_version, after.status, after.operation) == ("v2", "running", None), "back as it was"
        assert httpx.get(after.url + "/brain", headers={"X-Engine-Key": eng.api_key}, timeout=5).status_code == 200

        with pytest.raises(EngineNotFoundError):
            c.upgrade("nobody", "v2")
        with pytest.raises(ValidationError):
            c.upgrade("uma", "")
    finally:
        destroy_all(p)


def test_async_upgrade(upgrade_orch: Orchestrator) -> None:
    p = upgrade_orch.product()

    async def run() -> None:
        async with AsyncClient(upgrade_orch.url, platform_key=p.client.platform_key) as c:
            await c.provision("ada", engine_version="v1")
            up = await c.upgrade("ada", "v3")
            assert (up.engine_version, up.previous_version, up.status) == ("v3", "v1", "running")
            with pytest.raises(UpgradeFailedError) as info:
                await c.upgrade("ada", REFUSED_VERSION)
            assert info.value.status == 502 and REFUSED_VERSION in info.value.message
            assert (await c.get("ada")).engine_version == "v3"
            with pytest.raises(EngineNotFoundError):
                await c.upgrade("nobody", "v3")

    try:
        asyncio.run(run())
    finally:
        destroy_all(p)


# Rollouts.


def test_rollouts(upgrade_orch: Orchestrator) -> None:
    admin = upgrade_orch.admin()
    p = upgrade_orch.product()
    slug = p.registration.slug
    try:
        for user in ("r1", "r2"):
            p.client.provision(user, engine_version="v1")

        # To a refused version: never done, so every action applies.
        r = admin.create_rollout(slug, REFUSED_VERSION, 50, max_parallel=1, max_failures=1)
        assert isinstance(r, Rollout)
        assert (r.engine_version, r.percent, r.max_parallel, r.max_failures) == (REFUSED_VERSION, 50, 1, 1)
        assert r.state in ("running", "paused")
        with pytest.raises(RolloutInProgressError) as info:
            admin.create_rollout(p.product_id, "v2", 100)
        assert (info.value.code, info.value.status) == ("ROLLOUT_IN_PROGRESS", 409)

        assert admin.get_rollout(slug, r.rollout_id).rollout_id == r.rollout_id
        assert admin.get_rollout(p.product_id, r.rollout_id).rollout_id == r.rollout_id, "by id or slug"
        listed = admin.list_rollouts(slug)
        assert (listed.total, [x.rollout_id for x in listed.rollouts]) == (1, [r.rollout_id])

        assert admin.pause_rollout(slug, r.rollout_id).state == "paused"
        assert admin.resume_rollout(slug, r.rollout_id).state == "running"
        # The refused upgrade is rolled back, and one failure pauses it.
        paused = eventually(
            lambda: (lambda x: x if x.state == "paused" and x.counts.rolled_back >= 1 else None)(
                admin.get_rollout(slug, r.rollout_id)
            ),
            timeout=60,
            what="the rollout pausing itself",
        )
        assert paused.reason, "a rollout that paused itself says why"
        assert paused.counts.upgraded == 0

        with pytest.raises(ValidationError):
            admin.set_rollout_percent(slug, r.rollout_id, 25)
        assert admin.set_rollout_percent(slug, r.rollout_id, 100).percent == 100
        aborted = admin.abort_rollout(slug, r.rollout_id)
        assert aborted.state == "aborted" and aborted.reason
        with pytest.raises(ValidationError):
            admin.abort_rollout(slug, r.rollout_id)
        with pytest.raises(RolloutNotFoundError) as nf:
            admin.get_rollout(slug, str(uuid.uuid4()))
        assert (nf.value.code, nf.value.status) == ("ROLLOUT_NOT_FOUND", 404)
        with pytest.raises(ProductNotFoundError):
            admin.list_rollouts("no-such-" + uuid.uuid4().hex[:6])
        with pytest.raises(ValidationError):
            admin.create_rollout(slug, "v2", 0)
        assert {e.engine_version for e in p.client.list_engines().engines} == {"v1"}, "rolled back"

        # To a good version: done, every engine upgraded.
        good = admin.create_rollout(slug, "v2", 100, max_parallel=2)
        done = eventually(
            lambda: (lambda x: x if x.state == "done" else None)(admin.get_rollout(slug, good.rollout_id)),
            timeout=60,
            what="the rollout finishing",
        )
        assert (done.counts.upgraded, done.counts.pending, done.counts.rolled_back) == (2, 0, 0)
        assert {e.engine_version for e in p.client.list_engines().engines} == {"v2"}
        assert [x.rollout_id for x in admin.list_rollouts(slug).rollouts] == [good.rollout_id, r.rollout_id], "newest first"
    finally:
        destroy_all(p)


def test_async_rollouts(upgrade_orch: Orchestrator) -> None:
    p = upgrade_orch.product()
    slug = p.registration.slug
    p.client.provision("ar1", engine_version="v1")

    async def run() -> None:
        async with AsyncClient(upgrade_orch.url, admin_key=upgrade_orch.admin_key) as a:
            r = await a.create_rollout(slug, REFUSED_VERSION, 50, max_failures=3)
            assert r.max_failures == 3 and r.max_parallel == 2, "the server's default"
            with pytest.raises(RolloutInProgressError):
                await a.create_rollout(slug, "v2", 100)
            assert (await a.get_rollout(slug, r.rollout_id)).rollout_id == r.rollout_id
            assert (await a.list_rollouts(slug)).total == 1
            assert (await a.pause_rollout(slug, r.rollout_id)).state == "paused"
            assert (await a.resume_rollout(slug, r.rollout_id)).state == "running"
            assert (await a.set_rollout_percent(slug, r.rollout_id, 100)).percent == 100
            assert (await a.abort_rollout(slug, r.rollout_id)).state == "aborted"
            with pytest.raises(ValidationError):
                await a.resume_rollout(slug, r.rollout_id)
            with pytest.raises(RolloutNotFoundError):
                await a.abort_rollout(slug, str(uuid.uuid4()))

    try:
        asyncio.run(run())
    finally:
        # Let an upgrade the aborted rollout started finish before destroying.
        eventually(lambda: p.client.get("ar1").operation is None or None, timeout=30, what="no upgrade in flight")
        destroy_all(p)

