"""Protection of the service: CDS Hooks JWTs (in-process checks of the verifier, and a server
process that requires them), and what an authenticated client's feedback records."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
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
from iechs.audit import open_log, run_recorded
from iechs.audit.chain import read_record
from iechs.service.security import AuthError, KeyFileError, TokenVerifier


def _load_helpers() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_service_helpers", Path(__file__).with_name("test_service_helpers.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _load_helpers()
ISSUER = "https://ehr.example.org"
AUD = "http://127.0.0.1:9/cds-services/iechs-order-sign"


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


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, engine: Engine, ec_key: ec.EllipticCurvePrivateKey
) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("secured")
    store = str(folder / "audit.db")
    run_recorded(engine, S.NO_STEROID, store)
    keys = folder / "ehr.jwks.json"
    keys.write_text(json.dumps(jwks(ec_key, "ehr-1", "ES384")))
    with S.serving(store, "--jwt-issuer", ISSUER, "--jwt-key", str(keys), log_dir=folder) as server:
        server.store = store
        yield server


def test_every_cds_call_needs_a_token_for_its_endpoint(
    secured: Any, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    base = secured.url
    body = S.order_sign("svc-no-steroid", S.medication_request("tocilizumab", "t1"))
    with httpx.Client(base_url=base, timeout=60) as client:
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
