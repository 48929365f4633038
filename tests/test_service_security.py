"""Protection of the service: CDS Hooks JWTs (in-process checks of the verifier, and server
processes that require them: audience from --public-url only, proxy headers trusted only from
--forwarded-allow-ips, token lifetime, `jti` replay refused by every process over the store),
tenant scoping of episodes and card feedback, and what an authenticated client's feedback
records."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iechs import Engine
from iechs.audit import open_log, open_store, run_recorded
from iechs.audit.chain import read_record
from iechs.service.clients import tenant_episode_id
from iechs.service.security import AuthError, KeyFileError, TokenVerifier
from iechs.service.tables import ServiceTables
from iechs.service.tokens import UsedTokens
from sibling import load

S = load("test_service_helpers")
ISSUER = "https://ehr.example.org"
AUD = "http://127.0.0.1:9/cds-services/iechs-order-sign"
#: The servers' public URL: the audience of every token they accept.
PUBLIC = "https://cds.example.org"


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    out = {"iss": ISSUER, "aud": AUD, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def pem_file(tmp_path_factory: pytest.TempPathFactory, ec_key: ec.EllipticCurvePrivateKey) -> Path:
    path = tmp_path_factory.mktemp("keys") / "ehr.pub.pem"
    path.write_bytes(
        ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def jwks(key: Any, kid: str, alg: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
    return {"keys": [{**public, "kid": kid, "alg": alg, "use": "sig"}]}


def sign(key: Any, alg: str = "ES384", kid: str | None = "ehr-1", **changes: Any) -> str:
    headers = {"kid": kid} if kid else None
    return "Bearer " + jwt.encode(claims(**changes), key, algorithm=alg, headers=headers)


def hmac_token(secret: bytes) -> str:
    """An HS256 JWT signed with `secret` (PyJWT refuses to use a PEM key as one)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


# --- the verifier ------------------------------------------------------------------------------


def test_a_valid_token_from_a_pem_key(ec_key: ec.EllipticCurvePrivateKey, pem_file: Path) -> None:
    verifier = TokenVerifier(ISSUER, pem_file)
    token = sign(ec_key, tenant="north")
    assert verifier.verify(token, [AUD])["tenant"] == "north"
    # aud may be a list that contains the endpoint
    assert verifier.verify(sign(ec_key, aud=[AUD, "https://other"]), [AUD])["iss"] == ISSUER


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"iss": "https://evil.example.org"}, "Invalid issuer"),
        ({"aud": "http://127.0.0.1:9/cds-services/other"}, "Audience doesn't match"),
        ({"exp": int(time.time()) - 3600}, "Signature has expired"),
        ({"jti": None}, 'missing the "jti" claim'),
        ({"iat": None}, 'missing the "iat" claim'),
    ],
)
def test_tokens_that_are_refused(
    ec_key: ec.EllipticCurvePrivateKey, pem_file: Path, changes: dict[str, Any], message: str
) -> None:
    verifier = TokenVerifier(ISSUER, pem_file)
    with pytest.raises(AuthError, match=message):
        verifier.verify(sign(ec_key, **changes), [AUD])


def test_long_lived_tokens_and_unusable_tenants_are_refused(
    ec_key: ec.EllipticCurvePrivateKey, pem_file: Path
) -> None:
    verifier = TokenVerifier(ISSUER, pem_file)
    now = int(time.time())
    ten_years = now + 10 * 365 * 86400
    with pytest.raises(AuthError, match=r"lives 315360000 s \(exp - iat\), longer than the 300 s"):
        verifier.verify(sign(ec_key, exp=ten_years), [AUD])
    with pytest.raises(AuthError, match="lives 301 s"):
        verifier.verify(sign(ec_key, iat=now, exp=now + 301), [AUD])
    assert verifier.verify(sign(ec_key, iat=now, exp=now + 300), [AUD])["iss"] == ISSUER
    # ... nor an iat moved ahead to make a long-lived token look short.
    with pytest.raises(AuthError, match="not yet valid"):
        verifier.verify(sign(ec_key, iat=ten_years - 300, exp=ten_years), [AUD])
    strict = TokenVerifier(ISSUER, pem_file, max_lifetime=60)
    with pytest.raises(AuthError, match="longer than the 60 s"):
        strict.verify(sign(ec_key), [AUD])
    for tenant in (7, "", "a\u0000b", "t" * 257):
        with pytest.raises(AuthError, match="the tenant claim must be"):
            verifier.verify(sign(ec_key, tenant=tenant), [AUD])


def test_used_token_ids_are_kept_in_the_store_until_they_expire(tmp_path: Path) -> None:
    open_store(str(tmp_path / "audit.db"), create=True).close()
    tables = ServiceTables(str(tmp_path / "audit.db"))
    used = UsedTokens(tables, leeway_s=60)
    try:
        assert used.first_use(ISSUER, "a", expires=1000.0, now=900.0)
        assert not used.first_use(ISSUER, "a", expires=1000.0, now=950.0)
        assert used.first_use("https://other.example.org", "a", expires=1000.0, now=950.0)
        # Kept while the token could still be accepted (its exp, plus the leeway) ...
        assert not used.first_use(ISSUER, "a", expires=1000.0, now=1059.0)
        assert used.count() == 2
        # ... then dropped: such a token is refused as expired anyway.
        assert used.first_use(ISSUER, "b", expires=2000.0, now=1061.0 + 60)
        assert used.count() == 1
        other = UsedTokens(ServiceTables(str(tmp_path / "audit.db")), leeway_s=60)
        assert not other.first_use(ISSUER, "b", expires=2000.0, now=1200.0)  # another process
        other.tables.close()
    finally:
        tables.close()


def test_unsigned_symmetric_forged_and_replayed_tokens_are_refused(
    ec_key: ec.EllipticCurvePrivateKey, pem_file: Path
) -> None:
    verifier = TokenVerifier(ISSUER, pem_file)
    with pytest.raises(AuthError, match="missing Authorization"):
        verifier.verify(None, [AUD])
    with pytest.raises(AuthError, match="not 'Bearer <JWT>'"):
        verifier.verify("Basic abc", [AUD])
    unsigned = jwt.encode(claims(), "", algorithm="none")
    with pytest.raises(AuthError, match="'none' is not accepted"):
        verifier.verify(f"Bearer {unsigned}", [AUD])
    # Algorithm confusion: HMAC keyed with the public key (which anybody has).
    with pytest.raises(AuthError, match="'HS256' is not accepted"):
        verifier.verify(f"Bearer {hmac_token(pem_file.read_bytes())}", [AUD])
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(AuthError, match="Signature verification failed"):
        verifier.verify(sign(other), [AUD])
    token = sign(ec_key)
    verifier.verify(token, [AUD])
    with pytest.raises(AuthError, match="already used"):
        verifier.verify(token, [AUD])


def test_jwks_keys_are_chosen_by_kid(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(rsa_key, "rsa-1", "RS384")))
    verifier = TokenVerifier(ISSUER, path)
    assert verifier.verify(sign(rsa_key, "RS384", kid="rsa-1"), [AUD])["iss"] == ISSUER
    with pytest.raises(AuthError, match="no key 'rsa-2'"):
        verifier.verify(sign(rsa_key, "RS384", kid="rsa-2"), [AUD])
    with pytest.raises(AuthError, match="names no key"):
        verifier.verify(sign(rsa_key, "RS384", kid=None), [AUD])


def test_unusable_key_files(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    secret = tmp_path / "oct.json"
    secret.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}))
    with pytest.raises(KeyFileError, match="symmetric"):
        TokenVerifier(ISSUER, secret)
    private = tmp_path / "private.pem"
    private.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        TokenVerifier(ISSUER, private)
    with pytest.raises(KeyFileError, match="cannot read"):
        TokenVerifier(ISSUER, tmp_path / "missing.pem")


# --- a server that requires tokens -------------------------------------------------------------


PATIENT = "svc-no-steroid"
IL6 = "tocilizumab-monotherapy-deviation.json"  # first line since its last event


def record_as(engine: Engine, timeline: Path, store: str, episode: str, folder: Path) -> None:
    """Record `timeline` in `store` as episode `episode` (the patient id of the timeline)."""
    data = json.loads(timeline.read_text())
    data["patient"]["id"] = episode
    path = folder / f"{uuid.uuid4()}.json"
    path.write_text(json.dumps(data))
    run_recorded(engine, path, store)


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, engine: Engine, ec_key: ec.EllipticCurvePrivateKey
) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("secured")
    store = str(folder / "audit.db")
    # One patient id, three episodes: no tenant's (IEC-HS suspected), tenant north's (the
    # same course) and tenant south's (first line: steroids started).
    record_as(engine, S.NO_STEROID, store, PATIENT, folder)
    record_as(engine, S.NO_STEROID, store, tenant_episode_id("north", PATIENT), folder)
    record_as(engine, S.EXAMPLES / IL6, store, tenant_episode_id("south", PATIENT), folder)
    keys = folder / "ehr.jwks.json"
    keys.write_text(json.dumps(jwks(ec_key, "ehr-1", "ES384")))
    options = ("--jwt-issuer", ISSUER, "--jwt-key", str(keys), "--public-url", PUBLIC)
    with S.serving(store, *options, log_dir=folder) as server:
        server.store = store
        server.options = options
        yield server


def test_every_cds_call_needs_a_token_for_its_endpoint(
    secured: Any, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    base = PUBLIC  # the audience: the public URL, whatever address the request came to
    body = S.order_sign("svc-no-steroid", S.medication_request("tocilizumab", "t1"))
    with httpx.Client(base_url=secured.url, timeout=60) as client:
        refused = client.post(S.ORDER_SIGN, json=body)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "missing Authorization" in refused.json()["error"]
        for_discovery = sign(ec_key, aud=f"{base}/cds-services")
        wrong_endpoint = client.post(
            S.ORDER_SIGN, json=body, headers={"authorization": for_discovery}
        )
        assert wrong_endpoint.status_code == 401
        assert "Audience doesn't match" in wrong_endpoint.json()["error"]
        discovery = client.get(
            "/cds-services", headers={"authorization": sign(ec_key, aud=f"{base}/cds-services")}
        )
        assert discovery.status_code == 200
        token = sign(ec_key, aud=f"{base}{S.ORDER_SIGN}", sub="ehr-client", tenant="north")
        answer = client.post(S.ORDER_SIGN, json=body, headers={"authorization": token})
        assert answer.status_code == 200
        (card,) = answer.json()["cards"]
        assert card["indicator"] == "critical"
        # Refused before the body is read: a malformed request without a token is a 401.
        assert client.post(S.ORDER_SIGN, content=b"{").status_code == 401
        # The review page and the OpenAPI document are not patient data.
        assert client.get("/review").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        feedback = {
            "feedback": [
                {
                    "card": card["uuid"],
                    "outcome": "overridden",
                    "outcomeTimestamp": "2026-05-17T09:45:00Z",
                }
            ]
        }
        url = f"{S.ORDER_SIGN}/feedback"
        for aud in (f"{base}{url}", f"{base}{S.ORDER_SIGN}"):  # the feedback URL, or its service
            token = sign(ec_key, aud=aud, sub="ehr-client", tenant="north")
            done = client.post(url, json=feedback, headers={"authorization": token})
            assert done.status_code == 200, done.text
    with open_log(secured.store) as log, log.reading() as view:
        record = [read_record(item)[0] for item in view.records()][-1]
    assert record is not None
    assert record.actor == f"cds-client {ISSUER} sub ehr-client tenant north"


def _call(
    client: httpx.Client, key: Any, path: str, body: dict[str, Any], **claims: Any
) -> httpx.Response:
    """POST `body` to `path` with a fresh token for that endpoint (and these claims)."""
    aud = f"{PUBLIC}{path}"
    return client.post(path, json=body, headers={"authorization": sign(key, aud=aud, **claims)})


def test_the_audience_is_the_public_url_never_the_requests_own(
    secured: Any, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    body = S.patient_view(PATIENT)
    path = S.PATIENT_VIEW
    with httpx.Client(base_url=secured.url, timeout=60) as client:
        # Tokens minted for other services, sent with the Host and proxy headers that would
        # once have made this service take their audience as its own.
        spoofed = [
            ("http://evil.example", {"host": "evil.example"}),
            (
                f"https://127.0.0.1:{secured.port}",
                {"x-forwarded-proto": "https", "x-forwarded-for": "10.0.0.1"},
            ),
            (secured.url, {}),  # even the address the request came to: not the public URL
        ]
        for base, headers in spoofed:
            token = sign(ec_key, aud=f"{base}{path}")
            response = client.post(path, json=body, headers={"authorization": token, **headers})
            assert response.status_code == 401, base
            assert "Audience doesn't match" in response.json()["error"]
        assert _call(client, ec_key, path, body).status_code == 200


def test_proxy_headers_are_trusted_only_from_the_addresses_named(
    tmp_path: Path, engine: Engine
) -> None:
    store = str(tmp_path / "audit.db")
    run_recorded(engine, S.NO_STEROID, store)
    forwarded = {"x-forwarded-proto": "https"}
    for options, scheme in (((), "http"), (("--forwarded-allow-ips", "127.0.0.1"), "https")):
        with (
            S.serving(store, *options, log_dir=tmp_path) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            response = client.post(S.PATIENT_VIEW, json=S.patient_view(PATIENT), headers=forwarded)
            assert response.status_code == 200
            # The card links to the review page at the URL the service believes it has.
            link = response.json()["cards"][0]["links"][0]["url"]
            assert link == f"{scheme}://127.0.0.1:{server.port}/review", options


def test_a_long_lived_token_is_refused_by_the_server(
    secured: Any, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    now = int(time.time())
    with httpx.Client(base_url=secured.url, timeout=60) as client:
        response = _call(
            client, ec_key, S.PATIENT_VIEW, S.patient_view(PATIENT), exp=now + 10 * 365 * 86400
        )
        assert response.status_code == 401
        assert "(--max-token-lifetime)" in response.json()["error"]


def test_a_token_is_used_once_by_every_process_over_the_store(
    secured: Any, ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    body = S.patient_view(PATIENT)
    token = sign(ec_key, aud=f"{PUBLIC}{S.PATIENT_VIEW}")
    jti = jwt.decode(token.split()[1], options={"verify_signature": False})["jti"]
    with (
        S.serving(secured.store, *secured.options, log_dir=tmp_path) as replica,
        httpx.Client(base_url=secured.url, timeout=60) as a,
        httpx.Client(base_url=replica.url, timeout=60) as b,
    ):
        assert (
            a.post(S.PATIENT_VIEW, json=body, headers={"authorization": token}).status_code == 200
        )
        for client in (b, a):  # replayed to the other replica, or to the same one
            replayed = client.post(S.PATIENT_VIEW, json=body, headers={"authorization": token})
            assert replayed.status_code == 401
            assert replayed.json()["error"] == f"JWT {jti!r} was already used (replay)"
        assert _call(b, ec_key, S.PATIENT_VIEW, body).status_code == 200
    tables = ServiceTables(secured.store)
    try:
        (row,) = tables.query(
            "read", "SELECT issuer, expires FROM iechs_service_tokens WHERE jti = ?", (jti,)
        )
    finally:
        tables.close()
    assert row[0] == ISSUER
    assert row[1] > time.time()  # kept until the token expires


def _state(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    found = [c for c in response.json()["cards"] if c["source"]["topic"]["code"] == "state"]
    return str(found[0]["summary"]) if found else ""


def test_each_tenant_reads_its_own_episodes_only(
    secured: Any, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    body = S.patient_view(PATIENT)
    path = S.PATIENT_VIEW
    with httpx.Client(base_url=secured.url, timeout=60) as client:
        assert _state(_call(client, ec_key, path, body)).startswith(
            "IEC-HS episode: IEC-HS suspected"
        )
        assert _state(_call(client, ec_key, path, body, tenant="north")).startswith(
            "IEC-HS episode: IEC-HS suspected"
        )
        assert _state(_call(client, ec_key, path, body, tenant="south")).startswith(
            "IEC-HS episode: First line"
        )
        # A tenant with no episode of this patient: nothing, not another tenant's.
        assert _call(client, ec_key, path, body, tenant="east").json() == {"cards": []}
        # No client can name another tenant's episode: not by the patient id in context ...
        for tenant in (None, "south"):
            claims = {"tenant": tenant} if tenant else {}
            named = _call(client, ec_key, path, S.patient_view("@north/" + PATIENT), **claims)
            assert named.status_code == 400
            assert named.json()["error"].startswith(
                "$.context.patientId: a patient id does not start with '@'"
            )
        # ... nor by the prefetched Patient's identifier.
        patient = {
            "resourceType": "Patient",
            "identifier": [
                {"system": "https://iechs.dev/fhir/sid/patient-id", "value": "@north/" + PATIENT}
            ],
        }
        prefetched = S.patient_view("x1", prefetch={"patient": patient})
        response = _call(client, ec_key, path, prefetched, tenant="east")
        assert response.status_code == 400
        assert response.json()["error"].startswith("$.prefetch.patient.identifier[0].value:")


def test_feedback_only_from_the_client_the_card_was_issued_to(
    secured: Any, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    body = S.patient_view(PATIENT)
    url = f"{S.PATIENT_VIEW}/feedback"
    with httpx.Client(base_url=secured.url, timeout=60) as client:
        north = _call(client, ec_key, S.PATIENT_VIEW, body, tenant="north").json()["cards"]
        card = north[1]["uuid"]
        item = {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-05-17T10:00:00Z"}
        with open_store(secured.store) as store:
            before = store.head()
        for claims in ({"tenant": "south"}, {}, {"tenant": "North"}):
            response = _call(client, ec_key, url, {"feedback": [item]}, **claims)
            assert response.status_code == 404, claims
            assert response.json()["error"] == (
                f"$.feedback[0].card: no card '{card}' was issued by iechs-patient-view to this "
                "client"
            )
        with open_store(secured.store) as store:
            assert store.head() == before  # nothing recorded
        done = _call(client, ec_key, url, {"feedback": [item]}, tenant="north")
        assert done.status_code == 200, done.text
        assert done.json()["recorded"][0]["episode"] == tenant_episode_id("north", PATIENT)
