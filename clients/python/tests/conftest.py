"""Fixtures: a real orchestrator (the built ``bap-engine serve``, SQLite, the
subprocess backend running the reference engine) and products registered on
it.

The binary is ``$BAP_ENGINE_BIN`` when set (``scripts/test.sh`` builds it),
else it is built here with ``go build``. Everything a test starts is ended
when the session ends: the orchestrators get SIGTERM (and SIGKILL if they
linger), and since an orchestrator never stops its engines, every engine
process group it started is killed through the backend's pid files.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, TypeVar

import pytest

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parent
REPO = HERE.parents[2]
sys.path.insert(0, str(PACKAGE_ROOT))

from bap_engine_client import Client, ProductRegistration  # noqa: E402

T = TypeVar("T")

#: The test that waits out a real rate-limit window runs last (see
#: ``pytest_collection_modifyitems``), so that the window opened at the start
#: of the session has mostly passed by then.
LAST = "run_last"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{LAST}: run after every other test")


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker(LAST) is not None)


def eventually(probe: Callable[[], Optional[T]], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > end:
            pytest.fail(f"{what}: not reached within {timeout} s")
        time.sleep(0.05)


def free_port_range(n: int) -> range:
    """``n`` consecutive ports on 127.0.0.1 that nothing listens on now.

    They are taken from 32000-32767: below Linux's ephemeral ports (32768 on),
    which any client connection may hold by the time an engine binds, and
    above the ranges the Go tests hand out (10000-31999), which may run at the
    same time.
    """
    for _ in range(200):
        lo = random.randint(32000, 32768 - n)
        if all(_bindable(p) for p in range(lo, lo + n)):
            return range(lo, lo + n)
    raise RuntimeError(f"no {n} free consecutive ports")


def free_port() -> int:
    """One port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def kill_group(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL the process group ``pid`` leads, and wait until it is gone."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    end = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.02)


@dataclass
class Orchestrator:
    """One running ``bap-engine serve`` and what it was started with."""

    url: str
    admin_key: str
    env: Dict[str, str]
    data_root: Path
    log: Path
    proc: subprocess.Popen
    clients: List[Client] = field(default_factory=list)

    def admin(self) -> Client:
        """A client with the admin key."""
        c = Client(self.url, admin_key=self.admin_key)
        self.clients.append(c)
        return c

    def product(self, policy: Optional[dict] = None) -> "Product":
        """Register a new product (unique slug) and return its client."""
        slug = "p-" + uuid.uuid4().hex[:12]
        reg = self.admin().register_product(slug, f"Product {slug}", policy)
        c = Client(self.url, platform_key=reg.platform_api_key)
        self.clients.append(c)
        return Product(reg, c)

    def engine_pid(self, engine_id: str) -> int:
        """The pid of an engine process, from the subprocess backend's pid file."""
        data = json.loads((self.data_root / engine_id / "engine.pid").read_text())
        return int(data["pid"])

    def stop(self) -> None:
        """SIGTERM the orchestrator, then kill every engine it started."""
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid_file in self.data_root.glob("*/engine.pid"):
            try:
                kill_group(int(json.loads(pid_file.read_text())["pid"]))
            except (OSError, ValueError, KeyError):
                pass

    def log_tail(self) -> str:
        """The end of the orchestrator's output, for failure messages."""
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@dataclass
class Product:
    """A registered product and a client with its platform key."""

    registration: ProductRegistration
    client: Client

    @property
    def product_id(self) -> str:
        return self.registration.product_id


def fernet_key() -> str:
    """A new Fernet key (32 random bytes, URL-safe base64), as bap-engine keygen makes."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def start_orchestrator(binary: str, workdir: Path, ports: int = 80, **overrides: str) -> Orchestrator:
    """Start ``binary serve`` on SQLite in ``workdir`` with the subprocess
    backend and wait until it listens. ``overrides`` replace ORCH_* values."""
    workdir.mkdir(parents=True, exist_ok=True)
    data_root = workdir / "engines"
    port_range = free_port_range(ports)
    admin_key = "admin-" + secrets.token_urlsafe(24)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "ORCH_DATABASE_URL": f"sqlite://{workdir / 'bap.db'}",
        "ORCH_MASTER_KEY": fernet_key(),
        "ORCH_ADMIN_KEY": admin_key,
        "ORCH_ENGINE_BACKEND": "subprocess",
        "ORCH_SUBPROCESS_COMMAND": f"{binary} engine",
        "ORCH_DATA_ROOT": str(data_root),
        "ORCH_LISTEN_ADDR": "127.0.0.1:0",
        "ORCH_PORT_MIN": str(port_range.start),
        "ORCH_PORT_MAX": str(port_range.stop - 1),
        "ORCH_DEPLOYMENT_ID": "pytest-" + uuid.uuid4().hex[:8],
        "ORCH_HEALTH_CHECK_INTERVAL_S": "1",
        "ORCH_HEALTH_CHECK_TIMEOUT_S": "2",
        # A crashed engine stays failed for a minute before its restart, so
        # tests can see the orchestrator's answers about a failed engine.
        "ORCH_RESTART_BACKOFF_BASE_S": "60",
        "ORCH_BOOT_TIMEOUT_S": "30",
        "ORCH_LOG_LEVEL": "warn",
        "ORCH_LOG_FORMAT": "text",
    }
    env.update(overrides)
    log = workdir / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "serve"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    orch = Orchestrator("", admin_key, env, data_root, log, proc)
    end = time.monotonic() + 60
    while True:
        m = re.search(r"listening on (http://\S+)", orch.log_tail())
        if m:
            orch.url = m.group(1)
            return orch
        if proc.poll() is not None or time.monotonic() > end:
            orch.stop()
            raise RuntimeError(f"bap-engine serve did not start listening:\n{orch.log_tail()}")
        time.sleep(0.05)


def serving(binary: str, workdir: Path, ports: int = 80, **overrides: str) -> Iterator[Orchestrator]:
    """A fixture's orchestrator: :func:`start_orchestrator`, yielded, then stopped."""
    o = start_orchestrator(binary, workdir, ports, **overrides)
    yield o
    o.stop()


@pytest.fixture(scope="session")
def binary(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The bap-engine binary under test."""
    given = os.environ.get("BAP_ENGINE_BIN")
    if given:
        return given
    if shutil.which("go") is None:
        pytest.fail("BAP_ENGINE_BIN is not set and there is no go to build bap-engine with")
    out = tmp_path_factory.mktemp("bin") / "bap-engine"
    subprocess.run(["go", "build", "-o", str(out), "./cmd/bap-engine"], cwd=REPO, check=True)
    return str(out)


@pytest.fixture(scope="session")
def orch(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    """The orchestrator most tests share (each on a product of its own)."""
    yield from serving(binary, tmp_path_factory.mktemp("orch"))


@pytest.fixture(scope="session")
def tight_orch(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    """An orchestrator with one engine port and engines that take 30 s to
    become ready, but a 1 s boot timeout: its first provision times out (and
    the failed engine keeps the port), the next finds no port."""
    yield from serving(
        binary,
        tmp_path_factory.mktemp("tight"),
        ports=1,
        ORCH_BOOT_TIMEOUT_S="1",
        ORCH_ENGINE_ENV_PASSTHROUGH="ENGINE_WARMUP_S",
        ENGINE_WARMUP_S="30",
        ORCH_RESTART_BACKOFF_BASE_S="300",
    )


@pytest.fixture(scope="session")
def sleepy_orch(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    """An orchestrator that puts engines to sleep after 1 s without an admit."""
    yield from serving(binary, tmp_path_factory.mktemp("sleepy"), ports=10, ORCH_IDLE_TIMEOUT_S="1")


#: The engine version the reference engines of ``upgrade_orch`` refuse to
#: serve (ENGINE_REFUSE_VERSIONS): an upgrade to it is rolled back.
REFUSED_VERSION = "v-bad"


@pytest.fixture(scope="session")
def upgrade_orch(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    """An orchestrator whose engines refuse :data:`REFUSED_VERSION` (the
    subprocess engine reports ENGINE_VERSION and answers /health 503 for a
    version in ENGINE_REFUSE_VERSIONS), with a 6 s boot timeout: an upgrade
    to it is rolled back in a few seconds."""
    yield from serving(
        binary,
        tmp_path_factory.mktemp("upgrade"),
        ports=20,
        ORCH_BOOT_TIMEOUT_S="6",
        ORCH_SNAPSHOTS_KEPT="1",
        ORCH_ENGINE_ENV_PASSTHROUGH="ENGINE_REFUSE_VERSIONS",
        ENGINE_REFUSE_VERSIONS=REFUSED_VERSION,
    )


@pytest.fixture
def product(orch: Orchestrator) -> Iterator[Product]:
    """A fresh product on the shared orchestrator; its engines are destroyed
    after the test."""
    p = orch.product()
    yield p
    destroy_all(p)


def destroy_all(p: Product) -> None:
    """Destroy every engine of a product (best effort)."""
    try:
        for e in p.client.list_engines(limit=1000).engines:
            try:
                p.client.destroy(e.user_id)
            except Exception:
                pass
    except Exception:
        pass


@dataclass
class Window:
    """A product with rate_limit_rpm 1 whose one admit of the minute was
    made at ``opened`` (monotonic seconds)."""

    product: Product
    opened: float


@pytest.fixture(scope="session", autouse=True)
def rate_window(orch: Orchestrator) -> Iterator[Window]:
    """Opens a rate-limit window at the start of the session, for the test
    (run last) that waits for it to close."""
    p = orch.product({"rate_limit_rpm": 1})
    p.client.admit("early", auto_provision=True)
    yield Window(p, time.monotonic())
    destroy_all(p)
