"""Protection of the service: request size limits and, when configured, the signed JWT that a
CDS Hooks 2.0 client sends with every call (`Authorization: Bearer <JWT>`).

The JWT must be signed with an asymmetric algorithm (RS*, PS*, ES*, EdDSA; never `none` or
HMAC) by a key of the configured public key (PEM) or JWK Set (JSON; the JWT's `kid` picks the
key), name the configured issuer (`iss`), have the endpoint's URL under the configured public
URL as audience (`aud`; never built from the request's Host or X-Forwarded-* headers), carry
`exp`, `iat` and `jti`, live no longer than `max_lifetime` (`exp - iat`; CDS Hooks clients use
5 minutes, SMART Backend Services allows no more), and name a usable `tenant` if any. A `jti`
seen before (until its `exp`) is refused as a replay: by every process over the store when the
service keeps the used ids there (`tokens.UsedTokens`), else within this process. These checks
read the wall clock (expiry); decisions never do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from starlette.exceptions import HTTPException

from .clients import tenant_problem
from .errors import ServiceError

__all__ = [
    "ASYMMETRIC",
    "LEEWAY_S",
    "MAX_TOKEN_LIFETIME_S",
    "AuthError",
    "FirstUse",
    "Guard",
    "KeyFileError",
    "SeenInProcess",
    "TokenVerifier",
]

#: The signing algorithms accepted: asymmetric only (CDS Hooks forbids `none` and HMAC).
ASYMMETRIC = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
#: Clock skew allowed on `exp` and `iat`.
LEEWAY_S = 60
#: The longest a token may live (`exp - iat`) by default: CDS Hooks clients (the sandbox) sign
#: tokens for 5 minutes; SMART Backend Services caps `exp` at 5 minutes ahead.
MAX_TOKEN_LIFETIME_S = 300

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AuthError(Exception):
    """The request is not authenticated: 401 with this message."""


class KeyFileError(Exception):
    """The configured key file cannot be used."""


#: Remembers a token id as used: (issuer, jti, expires) -> True when it had not been used
#: before (`HookService.first_use_of_token`: in the store, for every process).
FirstUse = Callable[[str, str, float], bool]


class SeenInProcess:
    """Used token ids kept in this process only (a library's verifier, tests)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}

    def first_use(self, issuer: str, jti: str, expires: float) -> bool:
        now = time.time()
        self._seen = {k: exp for k, exp in self._seen.items() if exp + LEEWAY_S >= now}
        if (issuer, jti) in self._seen:
            return False
        self._seen[(issuer, jti)] = expires
        return True


class TokenVerifier:
    """Checks CDS Hooks JWTs from one issuer against a PEM public key or a JWK Set file."""

    def __init__(
        self,
        issuer: str,
        key_file: str | Path,
        *,
        max_lifetime: float = MAX_TOKEN_LIFETIME_S,
        first_use: FirstUse | None = None,
    ) -> None:
        self.issuer = issuer
        self.max_lifetime = max_lifetime
        self.first_use = first_use if first_use is not None else SeenInProcess().first_use
        path = Path(key_file)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read the key file ({exc.strerror})") from None
        self.pem: PublicKeyTypes | None = None
        self.jwks: jwt.PyJWKSet | None = None
        text = raw.decode("utf-8", "replace").strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
                self.jwks = jwt.PyJWKSet.from_dict(data if "keys" in data else {"keys": [data]})
            except (ValueError, jwt.PyJWKError, jwt.PyJWKSetError) as exc:
                raise KeyFileError(f"{path}: not a usable JWK Set ({exc})") from None
            for key in self.jwks.keys:
                if key.key_type == "oct":
                    raise KeyFileError(f"{path}: symmetric (oct) keys are not accepted")
        else:
            try:
                self.pem = load_pem_public_key(raw)
            except ValueError as exc:
                raise KeyFileError(f"{path}: not a PEM public key ({exc})") from None

    def _key(self, token: str) -> Any:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed JWT: {exc}") from None
        if header.get("alg") not in ASYMMETRIC:
            raise AuthError(
                f"JWT algorithm {header.get('alg')!r} is not accepted (asymmetric only: "
                f"{', '.join(ASYMMETRIC)})"
            )
        if self.pem is not None:
            return self.pem
        assert self.jwks is not None
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise AuthError("the JWT header names no key (kid)")
        for key in self.jwks.keys:
            if key.key_id == kid:
                return key
        raise AuthError(f"no key {kid!r} in the configured JWK Set")

    def verify(self, authorization: str | None, audiences: list[str]) -> dict[str, Any]:
        """The claims of a valid token for one of `audiences`; `AuthError` otherwise."""
        if not authorization:
            raise AuthError("missing Authorization: Bearer <JWT> (this service requires one)")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("the Authorization header is not 'Bearer <JWT>'")
        key = self._key(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ASYMMETRIC),
                audience=audiences,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid JWT: {exc}") from None
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise AuthError("invalid JWT: jti must be a string of 1-256 characters")
        lifetime = float(claims["exp"]) - float(claims["iat"])
        if lifetime > self.max_lifetime:
            raise AuthError(
                f"invalid JWT: it lives {lifetime:.0f} s (exp - iat), longer than the "
                f"{self.max_lifetime:.0f} s this service accepts (--max-token-lifetime)"
            )
        if "tenant" in claims:
            problem = tenant_problem(claims["tenant"])
            if problem is not None:
                raise AuthError(f"invalid JWT: {problem}")
        if not self.first_use(str(claims["iss"]), jti, float(claims["exp"])):
            raise AuthError(f"JWT {jti!r} was already used (replay)")
        return claims


async def _send_json(send: Send, status: int, body: dict[str, Any], extra: Any = ()) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


Runner = Callable[..., Awaitable[Any]]


async def _inline(call: Callable[..., Any], *args: Any) -> Any:
    return call(*args)


class Guard:
    """ASGI middleware: refuses bodies over `limit` bytes (413) and, with a verifier, calls to
    `/cds-services...` without a valid JWT for the endpoint's URL under `public_url` (401); the
    claims go to `scope["state"]`. `run` runs the verifier (the service runs it on its worker
    thread, where the store's connections live)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        verifier: TokenVerifier | None = None,
        public_url: str | None = None,
        run: Runner = _inline,
    ) -> None:
        if verifier is not None and not public_url:
            raise ValueError("a JWT verifier needs the public URL (the tokens' audience)")
        self.app = app
        self.limit = limit
        self.verifier = verifier
        self.public_url = public_url.rstrip("/") if public_url else None
        self.run = run

    def _audiences(self, scope: Scope) -> list[str]:
        """The endpoint's URL as clients know it: never from the request's own headers."""
        assert self.public_url is not None
        url = self.public_url + scope.get("path", "")
        # Feedback: the feedback URL itself, or the service it is about.
        return [url, url.removesuffix("/feedback")] if url.endswith("/feedback") else [url]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await _send_json(send, 400, {"error": "Content-Length: not a number"})
                return
            if int(length) > self.limit:
                await _send_json(send, 413, {"error": self._too_large()})
                return
        if self.verifier is not None and scope.get("path", "").startswith("/cds-services"):
            auth = headers.get(b"authorization")
            try:
                claims = await self.run(
                    self.verifier.verify,
                    auth.decode("latin-1") if auth is not None else None,
                    self._audiences(scope),
                )
            except AuthError as exc:
                await _send_json(send, 401, {"error": str(exc)}, [(b"www-authenticate", b"Bearer")])
                return
            except ServiceError as exc:  # the used token ids cannot be read: 503
                await _send_json(send, exc.status, {"error": exc.message})
                return
            scope.setdefault("state", {})["iechs_claims"] = claims
        received = 0
        started = False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # An HTTPException passes through FastAPI's body parsing to its handler.
                    raise HTTPException(413, self._too_large())
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except HTTPException as exc:  # raised by `limited` outside the app's own handlers
            if started or exc.status_code != 413:
                raise
            await _send_json(send, 413, {"error": self._too_large()})

    def _too_large(self) -> str:
        return f"$: the request body is larger than {self.limit} bytes"
