"""Decoding of the API's JSON into the typed values."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bap_engine_client import AdmitResult, EngineInfo, Rollout, RolloutCounts, parse_time

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
