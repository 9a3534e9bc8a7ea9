"""Typed values of the bap-engine HTTP API.

Every answer of the orchestrator is decoded into one of these frozen
dataclasses by its ``from_json`` class method. Timestamps become timezone-aware
:class:`datetime.datetime` values in UTC. Fields the server may add later are
ignored, so a newer orchestrator does not break an older client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, Optional

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


@dataclass(frozen=True)
class Operation:
    """An operation in flight on an engine: ``op`` (``"upgrade"``, ...) and,
    for an upgrade, its ``phase`` (one of :data:`OPERATION_PHASES`)."""

    op: str
    phase: Optional[str] = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Operation":
        """Decode an operation object."""
        return cls(op=data["op"], phase=data.get("phase") or None)


@dataclass(frozen=True)
class EngineInfo:
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
    engine_version: str
    created_at: datetime
    api_key: Optional[str] = field(default=None, repr=False)
    last_health_at: Optional[datetime] = None
    operation: Optional[Operation] = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "EngineInfo":
        """Decode an EngineInfo object."""
        return cls(**_engine_fields(data))


def _engine_fields(data: Mapping[str, Any]) -> Dict[str, Any]:
    op = data.get("operation")
    return dict(
        engine_id=data["engine_id"],
        user_id=data["user_id"],
        status=data["status"],
        url=data["url"],
        engine_version=data.get("engine_version", ""),
        created_at=_time(data.get("created_at")),
        api_key=data.get("api_key"),
        last_health_at=parse_time(data.get("last_health_at")),
        operation=Operation.from_json(op) if op else None,
    )


@dataclass(frozen=True)
class FleetEngine(EngineInfo):
    """An engine of any product as operators see it (``GET /fleet/engines``):
    never its key, with its product's slug and its health counters.

    ``health_failures`` counts consecutive failed health probes;
    ``restart_count`` the automatic restarts tried since it was last healthy.
    """

    product_slug: str = ""
    health_failures: int = 0
    restart_count: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FleetEngine":
        """Decode a FleetEngine object."""
        return cls(
            **_engine_fields(data),
            product_slug=data["product_slug"],
            health_failures=data.get("health_failures", 0),
            restart_count=data.get("restart_count", 0),
        )


@dataclass(frozen=True)
class FleetEngineList:
    """One page of the engines of every product and the total matching."""

    engines: List[FleetEngine]
    total: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FleetEngineList":
        """Decode a /fleet/engines answer."""
        return cls(engines=[FleetEngine.from_json(e) for e in data.get("engines") or []], total=data["total"])


@dataclass(frozen=True)
class Upgraded:
    """Answer of an upgrade: the engine on ``engine_version`` (same key and
    URL as before), and the version it left."""

    engine_id: str
    user_id: str
    status: str
    url: str
    engine_version: str
    previous_version: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Upgraded":
        """Decode an upgrade answer."""
        return cls(
            engine_id=data["engine_id"],
            user_id=data["user_id"],
            status=data["status"],
            url=data["url"],
            engine_version=data["engine_version"],
            previous_version=data["previous_version"],
        )


@dataclass(frozen=True)
class Provisioned:
    """Answer of a provision: the new engine, running, with its plaintext key."""

    engine_id: str
    user_id: str
    status: str
    url: str
    api_key: str = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Provisioned":
        """Decode a provision answer."""
        return cls(
            engine_id=data["engine_id"],
            user_id=data["user_id"],
            status=data["status"],
            url=data["url"],
            api_key=data["api_key"],
        )


@dataclass(frozen=True)
class Destroyed:
    """Answer of a destroy (``status`` is ``"destroyed"``)."""

    status: str
    engine_id: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Destroyed":
        """Decode a destroy answer."""
        return cls(status=data["status"], engine_id=data["engine_id"])


@dataclass(frozen=True)
class Started:
    """Answer of a start: the engine runs at ``url``."""

    status: str
    url: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Started":
        """Decode a start answer."""
        return cls(status=data["status"], url=data["url"])


@dataclass(frozen=True)
class Stopped:
    """Answer of a stop (``status`` is ``"stopped"``); the engine's data is kept."""

    status: str
    engine_id: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Stopped":
        """Decode a stop answer."""
        return cls(status=data["status"], engine_id=data["engine_id"])


@dataclass(frozen=True)
class KeyRotated:
    """Answer of an engine key rotation: the new key; the old one no longer works."""

    engine_id: str
    status: str
    api_key: str = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "KeyRotated":
        """Decode a rotate-key answer."""
        return cls(engine_id=data["engine_id"], status=data["status"], api_key=data["api_key"])


@dataclass(frozen=True)
class AdmitResult:
    """Answer of an admit.

    When ``admitted`` is true, ``engine`` is the running engine with its key;
    otherwise ``engine`` is ``None`` and ``reason`` is one of
    :data:`DENIAL_REASONS`.
    """

    admitted: bool
    engine: Optional[EngineInfo] = None
    reason: Optional[str] = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "AdmitResult":
        """Decode an admit answer."""
        engine = data.get("engine")
        return cls(
            admitted=bool(data["admitted"]),
            engine=EngineInfo.from_json(engine) if engine else None,
            reason=data.get("reason"),
        )


@dataclass(frozen=True)
class EngineList:
    """One page of the product's engines (without keys) and the total matching."""

    engines: List[EngineInfo]
    total: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "EngineList":
        """Decode a list answer."""
        return cls(engines=[EngineInfo.from_json(e) for e in data.get("engines") or []], total=data["total"])


@dataclass(frozen=True)
class FleetStatus:
    """The product's engines by state; ``health`` is ``ok``, ``degraded`` or ``critical``."""

    total: int
    by_status: Dict[str, int]
    health: str
    unhealthy_count: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FleetStatus":
        """Decode a /status answer."""
        return cls(
            total=data["total"],
            by_status=dict(data.get("by_status") or {}),
            health=data["health"],
            unhealthy_count=data["unhealthy_count"],
        )


@dataclass(frozen=True)
class FleetMetrics:
    """The product's operational numbers from the audit log (last hour and all time)."""

    provisions_1h: int
    crashes_1h: int
    restarts_1h: int
    avg_boot_ms: float
    total_provisions: int
    total_destroys: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FleetMetrics":
        """Decode a /metrics answer."""
        return cls(
            provisions_1h=data["provisions_1h"],
            crashes_1h=data["crashes_1h"],
            restarts_1h=data["restarts_1h"],
            avg_boot_ms=float(data["avg_boot_ms"]),
            total_provisions=data["total_provisions"],
            total_destroys=data["total_destroys"],
        )


@dataclass(frozen=True)
class AuditEntry:
    """One recorded action on an engine (``provision``, ``wake``, ``admit_denied``, ...)."""

    timestamp: datetime
    action: str
    actor: str
    metadata: Dict[str, Any]
    duration_ms: Optional[int] = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "AuditEntry":
        """Decode one audit entry."""
        return cls(
            timestamp=_time(data.get("timestamp")),
            action=data["action"],
            actor=data["actor"],
            metadata=dict(data.get("metadata") or {}),
            duration_ms=data.get("duration_ms"),
        )


@dataclass(frozen=True)
class AuditPage:
    """One page of an engine's audit trail, newest first, and the total count."""

    entries: List[AuditEntry]
    total: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "AuditPage":
        """Decode an audit answer."""
        return cls(entries=[AuditEntry.from_json(e) for e in data.get("entries") or []], total=data["total"])


@dataclass(frozen=True)
class ProductRegistration:
    """Answer of a product registration; the platform key is shown only here."""

    product_id: str
    slug: str
    platform_api_key: str = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ProductRegistration":
        """Decode a registration answer."""
        return cls(product_id=data["product_id"], slug=data["slug"], platform_api_key=data["platform_api_key"])


@dataclass(frozen=True)
class PlatformKeyRotation:
    """Answer of a platform key rotation: the new key (shown once) and until
    when the previous key keeps working."""

    product_id: str
    previous_key_expires_at: datetime
    platform_api_key: str = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "PlatformKeyRotation":
        """Decode a rotate-platform-key answer."""
        return cls(
            product_id=data["product_id"],
            previous_key_expires_at=_time(data.get("previous_key_expires_at")),
            platform_api_key=data["platform_api_key"],
        )


@dataclass(frozen=True)
class Health:
    """The orchestrator's own health (``status`` is ``"ok"``)."""

    status: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Health":
        """Decode a /health (or /livez, /readyz) answer."""
        return cls(status=data["status"])


@dataclass(frozen=True)
class Version:
    """The orchestrator's build: ``version`` (``"dev"`` unless stamped),
    ``commit`` (or ``"unknown"``) and the ``go`` version it was built with."""

    version: str
    commit: str
    go: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Version":
        """Decode a /version answer."""
        return cls(version=data["version"], commit=data["commit"], go=data["go"])


@dataclass(frozen=True)
class ProductInfo:
    """A product as operators see it (never its key), with its engines
    counted by state (every state named)."""

    product_id: str
    slug: str
    display_name: str
    policy: Dict[str, Any]
    created_at: datetime
    engines_by_status: Dict[str, int]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ProductInfo":
        """Decode a ProductInfo object."""
        return cls(
            product_id=data["product_id"],
            slug=data["slug"],
            display_name=data["display_name"],
            policy=dict(data.get("policy") or {}),
            created_at=_time(data.get("created_at")),
            engines_by_status=dict(data.get("engines_by_status") or {}),
        )


@dataclass(frozen=True)
class ProductList:
    """Every product, ordered by slug, and how many there are."""

    products: List[ProductInfo]
    total: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ProductList":
        """Decode a /products answer."""
        return cls(products=[ProductInfo.from_json(p) for p in data.get("products") or []], total=data["total"])


@dataclass(frozen=True)
class Replica:
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

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Replica":
        """Decode a replica object."""
        return cls(
            replica_id=data["replica_id"],
            host=data["host"],
            pid=data["pid"],
            version=data["version"],
            started_at=_time(data.get("started_at")),
            heartbeat_at=_time(data.get("heartbeat_at")),
            alive=bool(data["alive"]),
            shards=data["shards"],
        )


@dataclass(frozen=True)
class ReplicaList:
    """The orchestrator processes sharing the database."""

    replicas: List[Replica]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ReplicaList":
        """Decode a /replicas answer."""
        return cls(replicas=[Replica.from_json(r) for r in data.get("replicas") or []])


@dataclass(frozen=True)
class RolloutCounts:
    """Progress of a rollout over the engines it chose."""

    pending: int
    upgraded: int
    rolled_back: int
    skipped: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RolloutCounts":
        """Decode a rollout's counts."""
        return cls(
            pending=data.get("pending", 0),
            upgraded=data.get("upgraded", 0),
            rolled_back=data.get("rolled_back", 0),
            skipped=data.get("skipped", 0),
        )


@dataclass(frozen=True)
class Rollout:
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

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Rollout":
        """Decode a rollout object."""
        return cls(
            rollout_id=data["rollout_id"],
            engine_version=data["engine_version"],
            percent=data["percent"],
            max_parallel=data["max_parallel"],
            max_failures=data["max_failures"],
            state=data["state"],
            counts=RolloutCounts.from_json(data.get("counts") or {}),
            created_at=_time(data.get("created_at")),
            updated_at=_time(data.get("updated_at")),
            reason=data.get("reason") or None,
        )


@dataclass(frozen=True)
class RolloutList:
    """A product's rollouts, newest first, and how many there are."""

    rollouts: List[Rollout]
    total: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RolloutList":
        """Decode a rollout list answer."""
        return cls(rollouts=[Rollout.from_json(r) for r in data.get("rollouts") or []], total=data["total"])
