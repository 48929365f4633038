"""CORS (`iechs serve --allow-origin`): a browser-based CDS client, such as the CDS Hooks
sandbox, calls the service from a page of another origin.

A real headless Chromium (Debian's, driven by Playwright, as tests/test_review_browser.py)
opens a page served by a tiny http.server on another port and calls the service with
`fetch()`, with the JWT and JSON body the sandbox sends (so the browser sends a preflight): from
the allowed origin the call succeeds, from any other the browser blocks it. Outside CI a
missing chromium or Playwright skips the browser tests with the reason; in CI (`CI` set) it
fails them. The HTTP-level tests below them need no browser.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from iechs import Engine
from iechs.audit import run_recorded
from sibling import load

if TYPE_CHECKING:
    from playwright.sync_api import Browser


S = load("test_service_helpers")
ISSUER = "https://ehr.example.org"
PUBLIC = "https://cds.example.org"
PATIENT = "svc-no-steroid"

#: What the page runs: the sandbox's call (service-exchange.js: axios POST with Accept,
#: Authorization and a JSON body), with fetch().
CALL = """async ({url, method, token, body}) => {
  try {
    const headers = {"Accept": "application/json"};
    if (token) headers["Authorization"] = token;
    if (body) headers["Content-Type"] = "application/json";
    const init = {method, headers};
    if (body) init.body = JSON.stringify(body);
    const response = await fetch(url, init);
    return {fetched: true, status: response.status, json: await response.json()};
  } catch (error) {
    return {fetched: false, error: String(error)};
  }
}"""


class Page:
    """A page of its own origin, served by http.server on a free loopback port."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.html").write_text("<!doctype html><title>EHR</title><p>EHR</p>")
        handler = functools.partial(_Quiet, directory=str(folder))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


def sign(key: Any, path: str) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": f"{PUBLIC}{path}",
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
    }
    token = jwt.encode(claims, key, algorithm="ES384", headers={"kid": "ehr-1", "typ": "JWT"})
    return f"Bearer {token}"


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Page, Page]]:
    folder = tmp_path_factory.mktemp("pages")
    allowed, other = Page(folder / "allowed"), Page(folder / "other")
    yield allowed, other
    allowed.close()
    other.close()


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory,
    engine: Engine,
    key: ec.EllipticCurvePrivateKey,
    pages: tuple[Page, Page],
) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("cors")
    store = str(folder / "audit.db")
    run_recorded(engine, S.NO_STEROID, store)
    public = json.loads(jwt.algorithms.get_default_algorithms()["ES384"].to_jwk(key.public_key()))
    keys = folder / "ehr.jwks.json"
    keys.write_text(json.dumps({"keys": [{**public, "kid": "ehr-1", "alg": "ES384"}]}))
    options = (
        *("--jwt-issuer", ISSUER, "--jwt-key", str(keys), "--public-url", PUBLIC),
        *("--allow-origin", pages[0].origin + "/"),  # as an operator may write it
        *("--allow-origin", "https://sandbox.cds-hooks.org"),
    )
    with S.serving(store, *options, log_dir=folder) as server:
        yield server


def _from_page(browser: Browser, page: Page, **call: Any) -> dict[str, Any]:
    tab = browser.new_page()
    try:
        tab.goto(f"{page.origin}/index.html")
        result: dict[str, Any] = tab.evaluate(CALL, call)
        return result
    finally:
        tab.close()


# --- in the browser ------------------------------------------------------------------------------


def test_a_page_of_an_allowed_origin_calls_the_service(
    browser: Browser, service: Any, pages: tuple[Page, Page], key: ec.EllipticCurvePrivateKey
) -> None:
    allowed, _ = pages
    view = _from_page(
        browser,
        allowed,
        url=f"{service.url}{S.PATIENT_VIEW}",
        method="POST",
        token=sign(key, S.PATIENT_VIEW),
        body=S.patient_view(PATIENT),
    )
    assert view["fetched"], view
    assert view["status"] == 200
    assert S.topics(view["json"]["cards"]) == ["actions", "state"]
    discovery = _from_page(
        browser,
        allowed,
        url=f"{service.url}/cds-services",
        method="GET",
        token=sign(key, "/cds-services"),
        body=None,
    )
    assert discovery["fetched"], discovery
    assert [s["id"] for s in discovery["json"]["services"]] == [
        "iechs-patient-view",
        "iechs-order-sign",
    ]
    # A refusal reaches the page's script too, with its reason.
    refused = _from_page(
        browser,
        allowed,
        url=f"{service.url}{S.PATIENT_VIEW}",
        method="POST",
        token=None,
        body=S.patient_view(PATIENT),
    )
    assert refused["fetched"], refused
    assert refused["status"] == 401
    assert "missing Authorization" in refused["json"]["error"]


def test_a_page_of_another_origin_is_blocked_by_the_browser(
    browser: Browser, service: Any, pages: tuple[Page, Page], key: ec.EllipticCurvePrivateKey
) -> None:
    _, other = pages
    for method, path, body in (
        ("POST", S.PATIENT_VIEW, S.patient_view(PATIENT)),
        ("GET", "/cds-services", None),
    ):
        result = _from_page(
            browser,
            other,
            url=f"{service.url}{path}",
            method=method,
            token=sign(key, path),
            body=body,
        )
        assert result == {"fetched": False, "error": "TypeError: Failed to fetch"}


# --- over HTTP -----------------------------------------------------------------------------------


def test_preflight_is_answered_for_allowed_origins_only(
    service: Any, pages: tuple[Page, Page]
) -> None:
    allowed, other = pages
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
    }
    with httpx.Client(base_url=service.url, timeout=60) as client:
        for origin in (allowed.origin, "https://sandbox.cds-hooks.org"):
            response = client.options(S.PATIENT_VIEW, headers={"origin": origin, **preflight})
            assert response.status_code == 200  # no token needed for the preflight
            assert response.headers["access-control-allow-origin"] == origin
            allowed_headers = response.headers["access-control-allow-headers"].lower()
            assert {"authorization", "content-type"} <= set(allowed_headers.split(", "))
            assert "POST" in response.headers["access-control-allow-methods"]
            assert "access-control-allow-credentials" not in response.headers
        response = client.options(S.PATIENT_VIEW, headers={"origin": other.origin, **preflight})
        assert response.status_code == 400
        assert "access-control-allow-origin" not in response.headers
        # A request from another origin is answered (the browser, not the server, blocks
        # the page from reading it) with no CORS header.
        response = client.get("/review", headers={"origin": other.origin})
        assert "access-control-allow-origin" not in response.headers
        response = client.get("/review", headers={"origin": allowed.origin})
        assert response.headers["access-control-allow-origin"] == allowed.origin


def test_no_cors_headers_without_allowed_origins(tmp_path: Path, engine: Engine) -> None:
    store = str(tmp_path / "audit.db")
    run_recorded(engine, S.NO_STEROID, store)
    origin = {"origin": "https://sandbox.cds-hooks.org"}
    with (
        S.serving(store, log_dir=tmp_path) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        response = client.options(
            S.PATIENT_VIEW, headers={**origin, "access-control-request-method": "POST"}
        )
        assert response.status_code == 405
        assert "access-control-allow-origin" not in response.headers
        response = client.post(S.PATIENT_VIEW, json=S.patient_view(PATIENT), headers=origin)
        assert response.status_code == 200
        assert not [h for h in response.headers if h.startswith("access-control-")]
