"""The FastAPI application of `iechs serve`.

The services run on the event loop's own thread, one request at a time (the store's
connections belong to it): a request is short and CPU-bound (the store answers in a read or two,
the engine steps in microseconds), and handing it to a worker thread only made the two threads
queue for the interpreter lock, which under load cost more than the request itself. A process
uses one core; `iechs serve --workers N` runs N processes on one port (`worker_app`), each with
its own connections and kept episodes, checked against the store on every request. Each answer
names the process that gave it (`X-Iechs-Worker`: its PID).

Every error is `{"error": "..."}` naming the field, with a 4xx status for what the client can
fix (400 malformed, 401 not authenticated, 404 unknown service or card, 409 the episode cannot
take it, 413 too large, 429 too much feedback) and 503 when the store is unavailable. With
allowed origins (`--allow-origin`), browsers on those origins may call (CORS); no other origin
gets a CORS header.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import traceback
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._version import __version__
from .clients import Client
from .core import ORDER_SIGN, PATIENT_VIEW, HookService, ServiceConfig
from .errors import ServiceError
from .schemas import (
    CdsResponse,
    Discovery,
    ErrorBody,
    FeedbackRequest,
    FeedbackResponse,
    OrderSignRequest,
    PatientViewRequest,
)
from .security import Guard, TokenVerifier

__all__ = [
    "CONFIG_ENV",
    "CORS_HEADERS",
    "WORKER_HEADER",
    "build",
    "config_env",
    "create_app",
    "review_page",
    "worker_app",
]

T = TypeVar("T")
_SHA = re.compile(r'<code id="guideline-sha256">([0-9a-f]{64})</code>')
_HookCall = PatientViewRequest | OrderSignRequest
#: The request headers a browser client may send (the CDS Hooks sandbox sends these).
CORS_HEADERS = ("Authorization", "Content-Type", "Accept")
#: The response header naming the process that answered (its PID).
WORKER_HEADER = "X-Iechs-Worker"
#: The environment variable that hands the configuration to `worker_app` (JSON).
CONFIG_ENV = "IECHS_SERVE_CONFIG"


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    what = {
        400: "malformed request: the message names the field",
        401: "no valid JWT (when the service requires one)",
        404: "no such service (feedback: no such card issued to this client)",
        409: "the stored episode cannot take this (closed, other guideline, changed meanwhile)",
        413: "request body too large (feedback: a text longer than --max-feedback-text)",
        429: "too much feedback: per card (--feedback-per-card) or per minute "
        "(--feedback-per-minute, with Retry-After)",
        503: "the store is unavailable",
    }
    return {s: {"model": ErrorBody, "description": what[s]} for s in statuses}


def review_page(config: ServiceConfig, sha256: str) -> tuple[str | None, str]:
    """The review page to serve at `/review`, or None and why not.

    The page must be the review page of the guideline the service runs (its SHA-256 is on it).
    """
    if config.review_page is not None:
        path = Path(config.review_page)
    else:  # the checkout's diagrams/review.html, else the copy the wheel ships
        root = Path(__file__).resolve().parents[3]
        path = root / "diagrams" / "review.html"
        if not (root / "pyproject.toml").is_file():
            path = Path(__file__).resolve().parents[1] / "review.html"
        if not path.is_file():
            return None, (
                "no review page here (the checkout's diagrams/review.html): write one with "
                "`iechs review GUIDELINE --out page.html` and start with --review-page page.html"
            )
    try:
        html = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path}: cannot read the review page ({exc})"
    found = _SHA.search(html)
    if found is None or found.group(1) != sha256:
        return None, (
            f"{path} is not the review page of this guideline (sha256 {sha256[:12]}): write "
            "one with `iechs review GUIDELINE --out page.html` and pass --review-page"
        )
    return html, ""


def _path(loc: tuple[Any, ...]) -> str:
    out = "$"
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        kind = error.get("type")
        if kind == "json_invalid":
            why = (error.get("ctx") or {}).get("error", "")
            problems.append(f"$: not valid JSON ({why})" if why else "$: not valid JSON")
        elif kind == "missing" and loc == ("body",):
            problems.append("$: a JSON body is required")
        elif loc == ("body",) and isinstance(error.get("input"), bytes):
            # FastAPI parses JSON only when the request says so (no CSRF from browser pages).
            problems.append("$: expected a JSON body sent with Content-Type: application/json")
        elif loc == ("body",):
            problems.append(f"$: expected a JSON object ({error.get('msg')})")
        else:
            problems.append(f"{_path(loc)}: {error.get('msg')}")
    shown = "; ".join(problems[:3])
    return shown + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")


def _client(request: Request) -> Client:
    """The client of the request's verified JWT (none: the service requires no JWT)."""
    return Client.of(getattr(request.state, "iechs_claims", None))


async def _inline(call: Callable[..., T], *args: Any) -> T:
    """Run a service call on the event loop's thread (see the module's text)."""
    return call(*args)


def create_app(
    config: ServiceConfig,
    service: HookService | None = None,
    executor: ThreadPoolExecutor | None = None,
) -> FastAPI:
    """The FastAPI app (without the size and JWT guard and CORS: see `build`). The service
    runs on the event loop's thread, or on `executor` when one is given (its one thread)."""
    core = service if service is not None else HookService(config)
    meta = core.g.guideline
    page, no_page = review_page(config, core.g.sha256)
    run = _inline if executor is None else _on(executor)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run(core.close)
        if executor is not None:
            executor.shutdown()

    app = FastAPI(
        title="iechs CDS Hooks service",
        version=__version__,
        description=f"CDS Hooks 2.0 services for the guideline {meta.id} {meta.version} "
        f"({meta.status}): {meta.title}. Not a medical device.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    def review_url(request: Request) -> str:
        if config.review_url:
            return config.review_url
        base = config.public_url or str(request.base_url)
        return base.rstrip("/") + "/review"

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        traceback.print_exception(exc, file=sys.stderr)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get(
        "/cds-services",
        summary="CDS Hooks discovery",
        response_model=None,
        responses={200: {"model": Discovery}, **_errors(401)},
    )
    async def discovery() -> JSONResponse:
        return JSONResponse(core.discovery())

    answers = {PATIENT_VIEW: core.patient_view, ORDER_SIGN: core.order_sign}

    async def hook(service_id: str, body: _HookCall, request: Request) -> JSONResponse:
        """The answer to a valid hook call (the endpoints below, and `_FastHooks`)."""
        cards = await run(
            functools.partial(
                answers[service_id],
                hook_instance=body.hookInstance,
                client=_client(request),
            ),
            body.context.model_dump(exclude_unset=True),
            body.prefetch,
            body.extension,
            review_url(request),
        )
        return JSONResponse({"cards": cards})

    app.state.iechs_hook = hook

    @app.post(
        f"/cds-services/{PATIENT_VIEW}",
        summary="patient-view: the IEC-HS episode, its recommendations, alerts and what is due",
        response_model=None,
        responses={200: {"model": CdsResponse}, **_errors(400, 401, 409, 413, 503)},
    )
    async def patient_view(body: PatientViewRequest, request: Request) -> JSONResponse:
        return await hook(PATIENT_VIEW, body, request)

    @app.post(
        f"/cds-services/{ORDER_SIGN}",
        summary="order-sign: what the engine says about the draft medication orders",
        response_model=None,
        responses={200: {"model": CdsResponse}, **_errors(400, 401, 409, 413, 503)},
    )
    async def order_sign(body: OrderSignRequest, request: Request) -> JSONResponse:
        return await hook(ORDER_SIGN, body, request)

    @app.post(
        "/cds-services/{service_id}/feedback",
        summary="feedback: a card accepted or overridden (with the reason), into the audit log",
        response_model=None,
        responses={
            200: {"model": FeedbackResponse},
            **_errors(400, 401, 404, 409, 413, 429, 503),
        },
    )
    async def feedback(service_id: str, body: FeedbackRequest, request: Request) -> JSONResponse:
        items = [item.model_dump(exclude_unset=True) for item in body.feedback]
        recorded = await run(core.feedback, service_id, items, _client(request))
        return JSONResponse({"recorded": recorded})

    @app.get(
        "/review",
        summary="the guideline's review page (cards link here)",
        response_class=HTMLResponse,
        response_model=None,
        responses={
            200: {"content": {"text/html": {"schema": {"type": "string"}}}},
            404: {
                "description": "no review page of this guideline here (the message says why)",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                },
            },
        },
    )
    async def review() -> HTMLResponse | JSONResponse:
        if page is None:
            return JSONResponse({"error": no_page}, status_code=404)
        return HTMLResponse(page)

    def openapi() -> dict[str, Any]:
        """The OpenAPI document, without FastAPI's 422 (validation answers 400 here)."""
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _on(executor: ThreadPoolExecutor) -> Callable[..., Any]:
    import asyncio  # noqa: PLC0415 - only with an executor

    async def on_worker(call: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(call, *args))

    return on_worker


#: The hook calls `_FastHooks` answers: path -> (service id, request model).
_HOOKS: dict[str, tuple[str, type[_HookCall]]] = {
    f"/cds-services/{PATIENT_VIEW}": (PATIENT_VIEW, PatientViewRequest),
    f"/cds-services/{ORDER_SIGN}": (ORDER_SIGN, OrderSignRequest),
}


def _json_type(value: bytes | None) -> bool:
    """Whether a Content-Type is one FastAPI reads as JSON (application/json, .../x+json)."""
    if value is None:
        return False
    kind = value.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or (
        kind.startswith(b"application/") and kind.endswith(b"+json")
    )


class _FastHooks:
    """ASGI middleware: a valid hook call (patient-view, order-sign) answered without FastAPI's
    routing, dependency and middleware machinery (a quarter of the app's CPU per call).

    Only a call FastAPI would answer with the endpoint itself takes this way: a POST of a JSON
    body (`Content-Type` JSON) that the endpoint's own model validates. Its answer comes from
    the endpoint's own function (`create_app`'s `hook`), and a `ServiceError` is answered as the
    app's handler answers it. Anything else (another endpoint, a body that is not JSON or does
    not validate, a mounted app) goes to the app with the body as it was read, and gets the
    app's answer, errors included, exactly as without this."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.hook = app.state.iechs_hook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = _HOOKS.get(scope.get("path", "")) if scope["type"] == "http" else None
        headers = dict(scope.get("headers") or ()) if found is not None else {}
        if (
            found is None
            or scope.get("method") != "POST"
            or scope.get("root_path")
            or not _json_type(headers.get(b"content-type"))
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay(b"".join(chunks), receive, message), send)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        service_id, model = found
        try:
            request = model.model_validate(json.loads(body))
        except Exception:  # the app says what is wrong, in its words
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            response = await self.hook(service_id, request, Request(scope, receive))
        except ServiceError as exc:  # as the app's handler answers it
            response = JSONResponse(
                {"error": exc.message}, status_code=exc.status, headers=exc.headers
            )
        except Exception as exc:  # as the app's handler answers it
            traceback.print_exception(exc, file=sys.stderr)
            response = JSONResponse(
                {"error": f"internal error: {type(exc).__name__}"}, status_code=500
            )
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive, last: Message | None = None) -> Receive:
    """`receive` that first gives back the body already read (and `last`, a message that came
    instead of more body)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": last is not None}]
    if last is not None:
        pending.append(last)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


class _Named:
    """ASGI middleware: each HTTP answer names the process that gave it (`WORKER_HEADER`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.header = (WORKER_HEADER.lower().encode(), str(os.getpid()).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, named)


def build(config: ServiceConfig, service: HookService | None = None) -> ASGIApp:
    """The app behind its guard (body size limit and, when configured, JWT checks, the used
    token ids shared through the store), and CORS for the allowed origins, if any."""
    core = service if service is not None else HookService(config)
    verifier = None
    if config.jwt_issuer and config.jwt_key:
        verifier = TokenVerifier(
            config.jwt_issuer,
            config.jwt_key,
            max_lifetime=config.max_token_lifetime,
            first_use=core.first_use_of_token,
        )
    app: ASGIApp = Guard(
        _FastHooks(create_app(config, core)),
        limit=config.max_body,
        verifier=verifier,
        public_url=config.public_url,
        run=_inline,
    )
    if config.allow_origins:
        # Outside the guard: a preflight carries no token, and a 401 or 413 must reach the
        # page's script too. No cookies are used, so no credentials are allowed.
        app = CORSMiddleware(
            app,
            allow_origins=list(config.allow_origins),
            allow_methods=["GET", "POST"],
            allow_headers=list(CORS_HEADERS),
            expose_headers=["Retry-After", "WWW-Authenticate", WORKER_HEADER],
            max_age=600,
        )
    return _Named(app)


def config_env(config: ServiceConfig) -> str:
    """`config` as `worker_app` reads it from `CONFIG_ENV`."""
    return json.dumps(attrs.asdict(config))


def worker_app() -> ASGIApp:
    """The app of one worker process of `iechs serve --workers N` (uvicorn's factory): the
    configuration comes from `CONFIG_ENV`, which `iechs serve` sets and checked before."""
    fields = json.loads(os.environ[CONFIG_ENV])
    fields["allow_origins"] = tuple(fields.get("allow_origins") or ())
    return build(ServiceConfig(**fields))
