"""Every method of the blocking Client against a real orchestrator."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from bap_engine_client import (
    AdmitResult,
    Client,
    EngineClient,
    EngineInfo,
    EngineNotRunningError,
    InvalidPlatformKeyError,
    Provisioned,
)

from conftest import REPO, Orchestrator, Product, eventually


def engine_answers(url: str, key: str) -> int:
    """The status the engine gives a keyed request (its brain)."""
    return httpx.get(url + "/brain", headers={"X-Engine-Key": key}, timeout=5).status_code


def test_health_and_openapi_need_no_key(orch: Orchestrator) -> None:
    with Client(orch.url) as c:
        assert c.health().status == "ok"
        doc = c.openapi()
    assert doc["openapi"].startswith("3.1")
    assert "/engines/{user_id}/admit" in doc["paths"]


def test_products_register_policy_and_key_rotation(orch: Orchestrator) -> None:
    admin = orch.admin()
    reg = admin.register_product("acme-" + str(time.monotonic_ns()), "Acme", {"max_engines": 5, "custom": "kept"})
    assert reg.platform_api_key.startswith("pk-sept-")
    assert "pk-sept-" not in repr(reg), "keys stay out of reprs (and so out of logs)"
    product = Client(orch.url, platform_key=reg.platform_api_key)
    assert product.status().total == 0

    assert admin.update_policy(reg.product_id, {"max_engines": 2, "rate_limit_rpm": 100}) == {
        "max_engines": 2,
        "rate_limit_rpm": 100,
    }
    assert admin.update_policy(reg.product_id, None) == {}

    before = datetime.now(timezone.utc)
    rot = admin.rotate_platform_key(reg.product_id)
    assert rot.product_id == reg.product_id
    assert rot.platform_api_key.startswith("pk-sept-") and rot.platform_api_key != reg.platform_api_key
    # The default grace keeps the old key working for 300 s.
    assert before + timedelta(seconds=250) < rot.previous_key_expires_at < before + timedelta(seconds=400)
    assert product.status().total == 0, "the previous key works during the grace period"
    assert Client(orch.url, platform_key=rot.platform_api_key).status().total == 0
    with pytest.raises(InvalidPlatformKeyError):
        Client(orch.url, platform_key=reg.platform_api_key + "x").status()


def test_engine_lifecycle(product: Product) -> None:
    c = product.client
    p = c.provision("alice")
    assert isinstance(p, Provisioned)
    assert (p.user_id, p.status) == ("alice", "running")
    assert p.url.startswith("http://127.0.0.1:") and p.api_key.startswith("sk-sept-")
    assert engine_answers(p.url, p.api_key) == 200

    got = c.get("alice")
    assert isinstance(got, EngineInfo)
    assert (got.engine_id, got.status, got.url, got.api_key) == (p.engine_id, "running", p.url, p.api_key)
    assert got.engine_version == "september-engine:latest"
    assert got.created_at.tzinfo is not None
    assert p.api_key not in repr(got), "keys stay out of reprs"

    stopped = c.stop("alice")
    assert (stopped.status, stopped.engine_id) == ("stopped", p.engine_id)
    assert c.get("alice").status == "stopped"
    with pytest.raises(EngineNotRunningError):
        c.rotate_key("alice")

    started = c.start("alice")
    assert (started.status, started.url) == ("running", p.url)
    assert engine_answers(p.url, p.api_key) == 200, "the key survives stop and start"

    rot = c.rotate_key("alice")
    assert (rot.engine_id, rot.status) == (p.engine_id, "running")
    assert rot.api_key != p.api_key
    assert engine_answers(p.url, rot.api_key) == 200
    assert engine_answers(p.url, p.api_key) == 401, "the old key is dead"
    assert c.get("alice").api_key == rot.api_key

    gone = c.destroy("alice")
    assert (gone.status, gone.engine_id) == ("destroyed", p.engine_id)
    assert c.admit("alice") == AdmitResult(admitted=False, engine=None, reason="engine_not_found")


def test_admit_provisions_wakes_and_denies(product: Product) -> None:
    c = product.client
    assert c.admit("bob") == AdmitResult(admitted=False, reason="engine_not_found")
    first = c.admit("bob", auto_provision=True)
    assert first.admitted and first.engine is not None and first.reason is None
    assert first.engine.status == "running" and first.engine.api_key
    again = c.admit("bob")
    assert again.admitted and again.engine is not None
    assert again.engine.engine_id == first.engine.engine_id and again.engine.api_key == first.engine.api_key

    c.stop("bob")
    assert c.admit("bob") == AdmitResult(admitted=False, reason="engine_stopped")
    woken = c.admit("bob", auto_wake=True)
    assert woken.admitted and woken.engine is not None and woken.engine.status == "running"

    retried = c.admit_with_retry("bob", deadline=10)
    assert retried.admitted and retried.engine is not None
    assert retried.engine.engine_id == first.engine.engine_id


def test_list_engines_filters_and_pages(product: Product) -> None:
    c = product.client
    for user in ("u1", "u2", "u3"):
        c.provision(user)
    c.stop("u2")
    page = c.list_engines()
    assert page.total == 3
    assert [e.user_id for e in page.engines] == ["u1", "u2", "u3"], "oldest first"
    assert all(e.api_key is None for e in page.engines), "lists never carry keys"
    assert [e.user_id for e in c.list_engines(status="stopped").engines] == ["u2"]
    assert c.list_engines(status="running").total == 2
    second = c.list_engines(limit=1, offset=1)
    assert (second.total, [e.user_id for e in second.engines]) == (3, ["u2"])
    assert c.list_engines(offset=10).engines == []


def test_audit_status_and_metrics(product: Product) -> None:
    c = product.client
    c.provision("carol")
    c.stop("carol")
    c.start("carol")
    audit = c.audit("carol")
    assert audit.total == 3
    assert [e.action for e in audit.entries] == ["start", "stop", "provision"], "newest first"
    prov = audit.entries[-1]
    assert prov.actor == product.registration.slug
    assert prov.duration_ms is not None and prov.duration_ms >= 0
    assert prov.metadata.get("backend") == "subprocess"
    assert [e.action for e in c.audit("carol", limit=1, offset=1).entries] == ["stop"]

    st = c.status()
    assert (st.total, st.by_status.get("running"), st.health, st.unhealthy_count) == (1, 1, "ok", 0)
    m = c.metrics()
    assert (m.provisions_1h, m.total_provisions, m.total_destroys, m.crashes_1h) == (1, 1, 0, 0)
    assert m.avg_boot_ms > 0


def test_prometheus_metrics_with_the_admin_key(orch: Orchestrator, product: Product) -> None:
    product.client.provision("dave")
    text = orch.admin().prometheus_metrics()
    assert "# TYPE" in text
    assert product.registration.slug in text, "fleet metrics are labelled by product slug"


def test_engine_for_admits_and_calls_the_engine(product: Product) -> None:
    engine = product.client.engine_for("erin")
    assert isinstance(engine, EngineClient)
    assert engine.health()["status"] == "ok"
    assert engine.execute("one") == {"output": "Noted #1: one", "counter": 1}
    assert engine.execute({"input": "two"})["counter"] == 2
    assert product.client.get("erin").status == "running"
    assert "sk-sept-" not in repr(engine)


def test_sleeping_engines_are_denied_or_woken(sleepy_orch: Orchestrator) -> None:
    p = sleepy_orch.product()
    c = p.client
    assert c.admit("frank", auto_provision=True).admitted
    eventually(lambda: c.get("frank").status == "sleeping", what="the idle engine sleeps")
    assert c.admit("frank") == AdmitResult(admitted=False, reason="engine_sleeping")
    woken = c.admit_with_retry("frank", auto_wake=True, deadline=30)
    assert woken.admitted and woken.engine is not None and woken.engine.status == "running"
    actions = [e.action for e in c.audit("frank").entries]
    assert actions.index("wake") < actions.index("sleep"), f"newest first: {actions}"


def test_the_readme_usage_runs(orch: Orchestrator, product: Product, capsys: pytest.CaptureFixture[str]) -> None:
    """The Python lines of the README, run as written against this orchestrator."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Calling it from a product") :]
    code = section[section.index("```python") + len("```python") : section.index("```", section.index("```python") + 3)]
    code = code.replace("http://127.0.0.1:8000", orch.url).replace("pk-sept-…", product.registration.platform_api_key)
    exec(compile(code, "README.md", "exec"), {})
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "".join(p.get("token", "") for p in printed) == "Noted #1: hello"
    assert printed[-1] == {"output": "Noted #1: hello", "counter": 1}
