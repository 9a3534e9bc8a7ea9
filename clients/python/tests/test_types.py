"""Decoding of the API's JSON into the typed values."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bap_engine_client import (
    AdmitResult,
    EngineInfo,
    EngineList,
    FleetEngine,
    Operation,
    ProductInfo,
    Rollout,
    RolloutCounts,
    RolloutList,
    Upgraded,
    Version,
    parse_time,
)

UTC = timezone.utc


@pytest.mark.parametrize(
    "text, want",
    [
        ("2026-04-27T12:34:56.000Z", datetime(2026, 4, 27, 12, 34, 56, tzinfo=UTC)),
        ("2026-04-27T12:34:56.123Z", datetime(2026, 4, 27, 12, 34, 56, 123000, tzinfo=UTC)),
        ("2026-04-27T12:34:56.123456789Z", datetime(2026, 4, 27, 12, 34, 56, 123456, tzinfo=UTC)),
        ("2026-04-27T12:34:56Z", datetime(2026, 4, 27, 12, 34, 56, tzinfo=UTC)),
        ("2026-04-27T14:34:56.5+02:00", datetime(2026, 4, 27, 12, 34, 56, 500000, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, want: datetime) -> None:
    got = parse_time(text)
    assert got == want and got is not None and got.utcoffset() == timedelta(0)


def test_parse_time_of_none() -> None:
    assert parse_time(None) is None


def test_engine_info_from_a_list_has_no_key_and_ignores_new_fields() -> None:
    info = EngineInfo.from_json(
        {
            "engine_id": "e",
            "user_id": "u",
            "status": "sleeping",
            "url": "http://h:1",
            "engine_version": "img:2",
            "created_at": "2026-04-27T12:34:56.000Z",
            "last_health_at": "2026-04-27T12:35:00.000Z",
            "product_slug": "added-later",
        }
    )
    assert info.api_key is None
    assert info.last_health_at == datetime(2026, 4, 27, 12, 35, tzinfo=UTC)
    assert info.operation is None


ENGINE = {
    "engine_id": "e",
    "user_id": "u",
    "status": "running",
    "url": "http://h:1",
    "engine_version": "img:2",
    "created_at": "2026-04-27T12:34:56.000Z",
    "last_health_at": None,
}


def test_engine_info_with_an_upgrade_in_flight() -> None:
    info = EngineInfo.from_json({**ENGINE, "operation": {"op": "upgrade", "phase": "waiting_for_health"}})
    assert info.operation == Operation(op="upgrade", phase="waiting_for_health")
    assert EngineInfo.from_json({**ENGINE, "operation": {"op": "destroy"}}).operation == Operation("destroy")


def test_fleet_engine_is_an_engine_info_with_its_product() -> None:
    e = FleetEngine.from_json({**ENGINE, "product_slug": "acme", "health_failures": 2, "restart_count": 1})
    assert isinstance(e, EngineInfo)
    assert (e.product_slug, e.health_failures, e.restart_count, e.api_key) == ("acme", 2, 1, None)


PRODUCT = {
    "product_id": "p",
    "slug": "acme",
    "display_name": "Acme",
    "policy": {"max_engines": 3},
    "created_at": "2026-04-27T12:00:00.000Z",
    "engines_by_status": {"running": 2, "failed": 0},
}


def test_products_upgrades_and_version() -> None:
    p = ProductInfo.from_json(PRODUCT)
    assert (p.policy, p.engines_by_status["running"]) == ({"max_engines": 3}, 2)
    up = Upgraded.from_json(
        {"engine_id": "e", "user_id": "u", "status": "running", "url": "http://h:1", "engine_version": "b", "previous_version": "a"}
    )
    assert (up.previous_version, up.engine_version) == ("a", "b")
    assert Version.from_json({"version": "dev", "commit": "unknown", "go": "go1.24"}).go == "go1.24"


def test_denied_admit() -> None:
    res = AdmitResult.from_json({"admitted": False, "engine": None, "reason": "engine_busy"})
    assert res == AdmitResult(admitted=False, engine=None, reason="engine_busy")


def test_rollout_as_the_spec_describes_it() -> None:
    r = Rollout.from_json(
        {
            "rollout_id": "r-1",
            "engine_version": "september-engine:2.4.0",
            "percent": 25,
            "max_parallel": 2,
            "max_failures": 1,
            "state": "paused",
            "counts": {"pending": 3, "upgraded": 4, "rolled_back": 1, "skipped": 2},
            "created_at": "2026-04-27T12:00:00.000Z",
            "updated_at": "2026-04-27T12:05:00.000Z",
        }
    )
    assert r.counts == RolloutCounts(pending=3, upgraded=4, rolled_back=1, skipped=2)
    assert (r.state, r.percent, r.max_parallel, r.max_failures) == ("paused", 25, 2, 1)
    assert r.updated_at - r.created_at == timedelta(minutes=5)
    assert r.reason is None


def test_rollout_list_with_a_reason() -> None:
    one = {
        "rollout_id": "r-2",
        "engine_version": "v-bad",
        "percent": 50,
        "max_parallel": 1,
        "max_failures": 1,
        "state": "paused",
        "reason": "1 upgrade rolled back",
        "counts": {"pending": 0, "upgraded": 0, "rolled_back": 1, "skipped": 0},
        "created_at": "2026-04-27T12:00:00.000Z",
        "updated_at": "2026-04-27T12:05:00.000Z",
    }
    rl = RolloutList.from_json({"rollouts": [one], "total": 1})
    assert rl.total == 1 and rl.rollouts[0].reason == "1 upgrade rolled back"
    assert isinstance(rl.rollouts[0].percent, int)


def test_keys_the_server_may_leave_out() -> None:
    """Optional fields, lists, maps, nested objects and the keys older
    servers did not send may be absent; any other key is required."""
    info = EngineInfo.from_json({k: v for k, v in ENGINE.items() if k not in ("engine_version", "last_health_at")})
    assert (info.engine_version, info.last_health_at, info.api_key, info.operation) == ("", None, None, None)
    fleet = FleetEngine.from_json({**ENGINE, "product_slug": "acme"})
    assert (fleet.health_failures, fleet.restart_count) == (0, 0)
    assert RolloutCounts.from_json({}) == RolloutCounts(pending=0, upgraded=0, rolled_back=0, skipped=0)
    assert EngineList.from_json({"total": 0}) == EngineList(engines=[], total=0)
    assert ProductInfo.from_json({**PRODUCT, "policy": None}).policy == {}
    with pytest.raises(KeyError):
        FleetEngine.from_json(ENGINE)  # no product_slug
    with pytest.raises(KeyError):
        Version.from_json({"version": "dev", "commit": "unknown"})
    with pytest.raises(ValueError, match="timestamp missing"):
        EngineInfo.from_json({k: v for k, v in ENGINE.items() if k != "created_at"})
