"""Typed values of the bap-engine HTTP API.

Every answer of the orchestrator is decoded into one of these frozen
dataclasses by its ``from_json`` class method. Timestamps become timezone-aware
:class:`datetime.datetime` values in UTC. Fields the server may add later are
ignored, so a newer orchestrator does not break an older client.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, Optional, Type, TypeVar, Union, get_args, get_origin, get_type_hints

__all__ = [
    "STATES",
    "DENIAL_REASONS",
    "OPERATION_PHASES",
    "ROLLOUT_STATES",
    "Operation",
    "EngineInfo",
    "Provisioned",
    "Upgraded",
    "Destroyed",
    "Started",
    "Stopped",
    "KeyRotated",
    "AdmitResult",
    "EngineList",
    "FleetStatus",
    "FleetMetrics",
    "AuditEntry",
    "AuditPage",
    "ProductRegistration",
    "PlatformKeyRotation",
    "Health",
    "Version",
    "ProductInfo",
    "ProductList",
    "FleetEngine",
    "FleetEngineList",
    "Replica",
    "ReplicaList",
    "RolloutCounts",
    "Rollout",
    "RolloutList",
    "parse_time",
]

#: Engine states, as ``EngineInfo.status`` reports them.
STATES = ("provisioning", "running", "sleeping", "stopped", "failed", "destroying")

#: Why an admit is denied (``AdmitResult.reason``).
DENIAL_REASONS = (
    "engine_not_found",
    "engine_sleeping",
    "engine_stopped",
    "engine_unhealthy",
    "engine_busy",
)

#: Phases of an upgrade in flight, as ``EngineInfo.operation.phase`` reports them.
OPERATION_PHASES = ("snapshotting", "creating", "waiting_for_health", "rolling_back")

#: States of a rollout (``Rollout.state``).
ROLLOUT_STATES = ("running", "paused", "done", "aborted")


def parse_time(value: Optional[str]) -> Optional[datetime]:
    """Parse an RFC 3339 timestamp of the API (``2026-04-27T12:34:56.000Z``).

    Returns ``None`` for ``None``; the result is always in UTC.
    """
    if value is None:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python before 3.11 accepts only 3 or 6 fraction digits.
    head, sep, rest = text.partition(".")
    if sep:
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        text = head + "." + (digits + "000000")[:6] + rest
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _time(value: Optional[str]) -> datetime:
    parsed = parse_time(value)
    if parsed is None:
        raise ValueError("timestamp missing")
    return parsed


#: The metadata key of a field's value when its key is absent from the JSON.
_ABSENT = "bap_engine_client.absent"

_T = TypeVar("_T", bound="_FromJSON")


def _omittable(absent: Any, **kwargs: Any) -> Any:
    """A field whose key older servers may leave out; it then reads as ``absent``."""
    return field(metadata={_ABSENT: absent}, **kwargs)


def _decode(hint: Any, value: Any) -> Any:
    """``value`` of the JSON as the type ``hint`` says; ``None`` stands for an
    absent key (or null)."""
    origin = get_origin(hint)
    if origin is Union:  # Optional[X]: null, and an empty string or object, are None
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        if value is None or (not value and (inner is str or is_dataclass(inner))):
            return None
        return _decode(inner, value)
    if origin is list:
        (item,) = get_args(hint)
        return [_decode(item, v) for v in value or []]
    if origin is dict:
        return dict(value or {})
    if hint is datetime:
        return _time(value)
    if is_dataclass(hint):
        return hint.from_json(value or {})
    if hint in (bool, float):
        return hint(value)
    return value


@functools.lru_cache(maxsize=None)
def _field_hints(cls: type) -> Dict[str, Any]:
    return get_type_hints(cls)


class _FromJSON:
    """The decoding every type of this module shares, driven by its fields'
    type hints. A key the server may leave out reads as ``None`` (an
    ``Optional`` field), as empty (a list, a map, a nested object), or as
    what its field declares with :func:`_omittable`; any other absent key
    raises KeyError (ValueError for a timestamp)."""

    @classmethod
    def from_json(cls: Type[_T], data: Mapping[str, Any]) -> _T:
        """Decode a JSON object of the API (as ``response.json()`` returns it)."""
        hints = _field_hints(cls)
        values = {}
        for f in fields(cls):  # type: ignore[arg-type]  # every subclass is a dataclass
            hint = hints[f.name]
            if f.name in data:
                values[f.name] = _decode(hint, data[f.name])
            elif _ABSENT in f.metadata:
                values[f.name] = f.metadata[_ABSENT]
            elif hint in (str, int, bool, float):
                raise KeyError(f.name)
            else:
                values[f.name] = _decode(hint, None)
        return cls(**values)


@dataclass(frozen=True)
class Operation(_FromJSON):
    """An operation in flight on an engine: ``op`` (``"upgrade"``, ...) and,
    for an upgrade, its ``phase`` (one of :data:`OPERATION_PHASES`)."""

    op: str
    phase: Optional[str] = None


@dataclass(frozen=True)
class EngineInfo(_FromJSON):
    """One user's engine.

    ``api_key`` is the engine's plaintext key (send it as ``X-Engine-Key``);
    it is ``None`` in lists, which never carry keys. ``engine_version`` is the
    image reference the engine runs. Use the key for the request at hand and
    do not keep it beyond the admit's answer: it changes on rotation.
    ``operation`` is the operation in flight (an upgrade and its phase), or
    ``None`` when there is none.
    """

    engine_id: str
    user_id: str
    status: str
    url: str
    engine_version: str = _omittable("")
    created_at: datetime
    api_key: Optional[str] = field(default=None, repr=False)
    last_health_at: Optional[datetime] = None
    operation: Optional[Operation] = None


@dataclass(frozen=True)
class FleetEngine(EngineInfo):
    """An engine of any product as operators see it (``GET /fleet/engines``):
    never its key, with its product's slug and its health counters.

    ``health_failures`` counts consecutive failed health probes;
    ``restart_count`` the automatic restarts tried since it was last healthy.
    """

    product_slug: str = ""
    health_failures: int = _omittable(0, default=0)
    restart_count: int = _omittable(0, default=0)


@dataclass(frozen=True)
class FleetEngineList(_FromJSON):
    """One page of the engines of every product and the total matching."""

    engines: List[FleetEngine]
    total: int


@dataclass(frozen=True)
class Upgraded(_FromJSON):
    """Answer of an upgrade: the engine on ``engine_version`` (same key and
    URL as before), and the version it left."""

    engine_id: str
    user_id: str
    status: str
    url: str
    engine_version: str
    previous_version: str


@dataclass(frozen=True)
class Provisioned(_FromJSON):
    """Answer of a provision: the new engine, running, with its plaintext key."""

    engine_id: str
    user_id: str
    status: str
    url: str
    api_key: str = field(repr=False)


@dataclass(frozen=True)
class Destroyed(_FromJSON):
    """Answer of a destroy (``status`` is ``"destroyed"``)."""

    status: str
    engine_id: str


@dataclass(frozen=True)
class Started(_FromJSON):
    """Answer of a start: the engine runs at ``url``."""

    status: str
    url: str


@dataclass(frozen=True)
class Stopped(_FromJSON):
    """Answer of a stop (``status`` is ``"stopped"``); the engine's data is kept."""

    status: str
    engine_id: str


@dataclass(frozen=True)
class KeyRotated(_FromJSON):
    """Answer of an engine key rotation: the new key; the old one no longer works."""

    engine_id: str
    status: str
    api_key: str = field(repr=False)


@dataclass(frozen=True)
class AdmitResult(_FromJSON):
    """Answer of an admit.

    When ``admitted`` is true, ``engine`` is the running engine with its key;
    otherwise ``engine`` is ``None`` and ``reason`` is one of
    :data:`DENIAL_REASONS`.
    """

    admitted: bool
    engine: Optional[EngineInfo] = None
    reason: Optional[str] = None


@dataclass(frozen=True)
class EngineList(_FromJSON):
    """One page of the product's engines (without keys) and the total matching."""

    engines: List[EngineInfo]
    total: int


@dataclass(frozen=True)
class FleetStatus(_FromJSON):
    """The product's engines by state; ``health`` is ``ok``, ``degraded`` or ``critical``."""

    total: int
    by_status: Dict[str, int]
    health: str
    unhealthy_count: int


@dataclass(frozen=True)
class FleetMetrics(_FromJSON):
    """The product's operational numbers from the audit log (last hour and all time)."""

    provisions_1h: int
    crashes_1h: int
    restarts_1h: int
    avg_boot_ms: float
    total_provisions: int
    total_destroys: int


@dataclass(frozen=True)
class AuditEntry(_FromJSON):
    """One recorded action on an engine (``provision``, ``wake``, ``admit_denied``, ...)."""

    timestamp: datetime
    action: str
    actor: str
    metadata: Dict[str, Any]
    duration_ms: Optional[int] = None


@dataclass(frozen=True)
class AuditPage(_FromJSON):
    """One page of an engine's audit trail, newest first, and the total count."""

    entries: List[AuditEntry]
    total: int


@dataclass(frozen=True)
class ProductRegistration(_FromJSON):
    """Answer of a product registration; the platform key is shown only here."""

    product_id: str
    slug: str
    platform_api_key: str = field(repr=False)


@dataclass(frozen=True)
class PlatformKeyRotation(_FromJSON):
    """Answer of a platform key rotation: the new key (shown once) and until
    when the previous key keeps working."""

    product_id: str
    previous_key_expires_at: datetime
    platform_api_key: str = field(repr=False)


@dataclass(frozen=True)
class Health(_FromJSON):
    """The orchestrator's own health (``status`` is ``"ok"``)."""

    status: str


@dataclass(frozen=True)
class Version(_FromJSON):
    """The orchestrator's build: ``version`` (``"dev"`` unless stamped),
    ``commit`` (or ``"unknown"``) and the ``go`` version it was built with."""

    version: str
    commit: str
    go: str


@dataclass(frozen=True)
class ProductInfo(_FromJSON):
    """A product as operators see it (never its key), with its engines
    counted by state (every state named)."""

    product_id: str
    slug: str
    display_name: str
    policy: Dict[str, Any]
    created_at: datetime
    engines_by_status: Dict[str, int]


@dataclass(frozen=True)
class ProductList(_FromJSON):
    """Every product, ordered by slug, and how many there are."""

    products: List[ProductInfo]
    total: int


@dataclass(frozen=True)
class Replica(_FromJSON):
    """One orchestrator process sharing the database. ``alive``: its
    heartbeat is younger than ORCH_REPLICA_TTL_S; ``shards``: how many shards
    of the engines' background work it holds."""

    replica_id: str
    host: str
    pid: int
    version: str
    started_at: datetime
    heartbeat_at: datetime
    alive: bool
    shards: int


@dataclass(frozen=True)
class ReplicaList(_FromJSON):
    """The orchestrator processes sharing the database."""

    replicas: List[Replica]


@dataclass(frozen=True)
class RolloutCounts(_FromJSON):
    """Progress of a rollout over the engines it chose."""

    pending: int = _omittable(0)
    upgraded: int = _omittable(0)
    rolled_back: int = _omittable(0)
    skipped: int = _omittable(0)


@dataclass(frozen=True)
class Rollout(_FromJSON):
    """A canary or fleet upgrade of a product's engines to ``engine_version``.

    ``percent`` is the share of the product's engines it upgrades (exactly
    ``ceil(percent * N / 100)`` of its N engines, in a stable order);
    ``state`` is one of :data:`ROLLOUT_STATES`; ``reason`` says why it
    paused itself or was aborted (``None`` otherwise).
    """

    rollout_id: str
    engine_version: str
    percent: int
    max_parallel: int
    max_failures: int
    state: str
    counts: RolloutCounts
    created_at: datetime
    updated_at: datetime
    reason: Optional[str] = None


@dataclass(frozen=True)
class RolloutList(_FromJSON):
    """A product's rollouts, newest first, and how many there are."""

    rollouts: List[Rollout]
    total: int
