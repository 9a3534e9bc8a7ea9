"""The example product (examples/product/app.py) end to end: a real
orchestrator, the product served by uvicorn in its own process, and HTTP
requests as a browser would send them."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import httpx
import pytest

from bap_engine_client import (
    DENIAL_REASONS,
    ERRORS_BY_CODE,
    AdmissionDenied,
    EngineError,
    TransportError,
    error_for,
)

from conftest import REPO, Orchestrator, Product, destroy_all, eventually, free_port, kill_group

APP = REPO / "examples" / "product" / "app.py"


def load_app_module():
    spec = importlib.util.spec_from_file_location("example_product_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class Site:
    """The running example product."""

    def __init__(self, url: str, product: Product, proc: subprocess.Popen, log: Path) -> None:
        self.url, self.product, self.proc, self.log = url, product, proc, log
        self.http = httpx.Client(base_url=url, timeout=60)

    def ask(self, user: str, message: str) -> httpx.Response:
        return self.http.post("/ask", json={"message": message}, headers={"X-User-Id": user})


@pytest.fixture(scope="module")
def site(orch: Orchestrator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    product = orch.product()
    port = free_port()
    log = tmp_path_factory.mktemp("product") / "product.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "BAP_URL": orch.url,
        "BAP_PLATFORM_KEY": product.registration.platform_api_key,
        "PRODUCT_PORT": str(port),
        "ADMIT_DEADLINE_S": "5",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(APP)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    s = Site(f"http://127.0.0.1:{port}", product, proc, log)

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the example product exited:\n{log.read_text()}")
        try:
            return s.http.get("/").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        eventually(up, what="the example product serves")
        yield s
    finally:
        s.http.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait(timeout=5)
        orch.admin().update_policy(product.product_id, {})
        destroy_all(product)


def test_the_page_is_served(site: Site) -> None:
    page = site.http.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert 'fetch("/ask"' in page.text


def test_a_question_gets_the_engines_streamed_answer(site: Site) -> None:
    c = site.product.client
    assert c.admit("mia").reason == "engine_not_found"

    with site.http.stream("POST", "/ask", json={"message": "hello there"}, headers={"X-User-Id": "mia"}) as res:
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("text/plain")
        assert res.headers.get("transfer-encoding") == "chunked", "streamed, not buffered"
        chunks: List[str] = list(res.iter_text())
    assert "".join(chunks) == "Noted #1: hello there"
    assert c.get("mia").status == "running", "the first question provisioned mia's engine"

    # The engine keeps its brain between requests, and a stopped engine is woken.
    assert site.ask("mia", "again").text == "Noted #2: again"
    c.stop("mia")
    answer = site.ask("mia", "after a stop")
    assert (answer.status_code, answer.text) == (200, "Noted #3: after a stop")

    # A rotated key is picked up by admitting again.
    c.rotate_key("mia")
    assert site.ask("mia", "new key").text == "Noted #4: new key"


def test_users_get_their_own_engines(site: Site) -> None:
    assert site.ask("noah", "hi").text == "Noted #1: hi"
    assert site.ask("olga", "hi").text == "Noted #1: hi"
    assert site.ask("noah", "hi").text == "Noted #2: hi"


def test_a_crashed_engine_gets_a_restarting_answer(orch: Orchestrator, site: Site) -> None:
    c = site.product.client
    assert site.ask("pia", "hi").status_code == 200
    engine = c.get("pia")
    kill_group(orch.engine_pid(engine.engine_id))
    eventually(lambda: c.get("pia").status == "failed", what="the orchestrator notices the crash")
    res = site.ask("pia", "are you there?")
    assert res.status_code == 503
    assert res.headers["Retry-After"] == "60"
    assert "restarted" in res.json()["error"]["message"]


def test_bad_requests(site: Site) -> None:
    assert site.http.post("/ask", json={"message": "x"}).status_code == 401
    res = site.ask("not a valid id!", "x")
    assert res.status_code == 400 and "user name" in res.json()["error"]["message"]
    assert site.http.post("/ask", json={}, headers={"X-User-Id": "q"}).status_code == 422


def test_capacity_and_rate_limit_answers(orch: Orchestrator, site: Site) -> None:
    admin, c = orch.admin(), site.product.client
    engines = c.list_engines().total
    admin.update_policy(site.product.product_id, {"max_engines": engines})
    res = site.ask("quinn", "hi")
    assert res.status_code == 503 and res.headers["Retry-After"] == "300"
    assert "cannot start a new assistant" in res.json()["error"]["message"]
    assert "QUOTA" not in res.text, "the orchestrator's wording stays with the developers"

    admin.update_policy(site.product.product_id, {"rate_limit_rpm": 1})
    assert site.ask("mia", "the minute's one admit").status_code == 200
    res = site.ask("mia", "hi")
    assert res.status_code == 429
    wait = int(res.headers["Retry-After"])
    assert 1 <= wait <= 60
    assert res.json()["error"] == {
        "message": f"Many people are asking right now. Please try again in {wait} seconds.",
        "retry_after": wait,
    }
    admin.update_policy(site.product.product_id, {})
    assert site.ask("mia", "hi").status_code == 200


def test_every_denial_and_error_has_an_answer_for_people() -> None:
    app = load_app_module()
    for reason in DENIAL_REASONS:
        a = app.answer_for_denial(reason)
        assert a.status == 503 and a.retry_after and a.message.endswith(".")
        assert app.answer_for_error(AdmissionDenied(reason)) == a
    for code, cls in ERRORS_BY_CODE.items():
        err = error_for(429 if code == "RATE_LIMITED" else 500, code, "internal wording " + code, 7.0)
        assert isinstance(err, cls)
        a = app.answer_for_error(err)
        assert 400 <= a.status < 600, code
        assert code not in a.message and "internal wording" not in a.message, code
        if err.retryable:
            assert a.retry_after is not None and a.status in (429, 503), code
    assert app.answer_for_error(error_for(429, "RATE_LIMITED", "x", 7.0)).retry_after == 7
    assert app.answer_for_error(TransportError("refused")).status == 503
    assert app.answer_for_error(EngineError("boom", status=500)).status == 502
