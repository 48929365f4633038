"""`iechs serve`: the CDS Hooks service over an audit store.

Imports nothing heavy until `run` (FastAPI, uvicorn and the engine load only when serving).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any
from urllib.parse import urlsplit

__all__ = ["HELP", "MAX_DEFAULT_WORKERS", "configure", "default_workers", "run"]

HELP = "serve CDS Hooks (patient-view, order-sign, feedback) over an audit store"
#: `--workers` by default: the cores this process may use, at most this many.
MAX_DEFAULT_WORKERS = 4
_LOOPBACK = ("127.", "::1", "localhost")
_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.\-]+(?::[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="LOG",
        required=True,
        help="the audit store holding the episodes (PATH.db or postgresql://...); feedback is "
        "recorded there",
    )
    parser.add_argument("--guideline", help="guideline YAML (default: bundled iec-hs.yaml)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument(
        "--runtime",
        choices=("statechart", "table"),
        default="statechart",
        help="the engine's runtime (same decisions; table is faster)",
    )
    parser.add_argument(
        "--public-url",
        metavar="URL",
        help="this service's base URL as clients see it: the JWT audience (required with "
        "--jwt-issuer; never taken from the request) and the cards' links (default: the "
        "request's)",
    )
    parser.add_argument(
        "--review-url", metavar="URL", help="where cards link to the review page (default: /review)"
    )
    parser.add_argument(
        "--review-page",
        metavar="FILE",
        help="the page served at /review (default: the checkout's diagrams/review.html)",
    )
    parser.add_argument(
        "--jwt-issuer", metavar="ISS", help="require JWTs from this issuer (CDS Hooks 2.0)"
    )
    parser.add_argument(
        "--jwt-key",
        metavar="FILE",
        help="the issuer's public key: a PEM file or a JWK Set (JSON)",
    )
    parser.add_argument(
        "--max-token-lifetime",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="longest a JWT may live, exp - iat (default 300: CDS Hooks clients sign for 5 "
        "minutes; longer: 401)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin (https://host[:port]) allowed to call the service (CORS); "
        "repeat for more; default none: no CORS headers",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="trust X-Forwarded-Proto/For from these proxy addresses (comma-separated, as "
        "uvicorn's); default: trust no proxy header",
    )
    parser.add_argument(
        "--max-body",
        type=int,
        default=1 << 20,
        metavar="BYTES",
        help="largest request body accepted (default 1 MiB; larger: 413)",
    )
    parser.add_argument(
        "--feedback-per-card",
        type=int,
        default=10,
        metavar="N",
        help="feedbacks taken per card, ever (default 10; more: 429)",
    )
    parser.add_argument(
        "--feedback-per-minute",
        type=int,
        default=60,
        metavar="N",
        help="feedbacks taken per client in any minute, over all replicas (default 60; more: "
        "429 with Retry-After)",
    )
    parser.add_argument(
        "--max-feedback-text",
        type=int,
        default=1000,
        metavar="CHARS",
        help="longest override comment or reason text taken (default 1000; longer: 413)",
    )
    parser.add_argument(
        "--keep-cards-days",
        type=float,
        default=30.0,
        metavar="DAYS",
        help="how long an issued card takes feedback (default 30)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes answering on the port, each using one core (default: the cores this "
        f"process may use, at most {MAX_DEFAULT_WORKERS}); each keeps the episodes it restored "
        "and checks them against the store on every request",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (uvicorn's access log)"
    )


def _origins(given: list[str]) -> tuple[tuple[str, ...], str | None]:
    """The allowed origins as browsers send them (scheme://host[:port], lower case), or why
    one is not an origin."""
    out = []
    for origin in given:
        shown = origin.strip().rstrip("/").lower()
        if _ORIGIN.fullmatch(shown) is None:
            return (), (
                f"--allow-origin {origin!r}: expected an origin, scheme://host[:port] (e.g. "
                "https://sandbox.cds-hooks.org), without path or wildcard"
            )
        out.append(shown)
    return tuple(dict.fromkeys(out)), None


def _public_url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        return f"--public-url {url!r}: expected an absolute http(s) URL without query or fragment"
    return None


def default_workers() -> int:
    """`--workers` by default: the cores this process may use, at most `MAX_DEFAULT_WORKERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


def _limits_problem(args: argparse.Namespace) -> str | None:
    if args.workers is not None and args.workers < 1:
        return "--workers must be at least 1"
    for name in ("max_body", "feedback_per_card", "feedback_per_minute", "max_feedback_text"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    for name in ("max_token_lifetime", "keep_cards_days"):
        if not getattr(args, name) > 0:
            return f"--{name.replace('_', '-')} must be more than 0"
    return None


def _config_problem(args: argparse.Namespace) -> str | None:
    """Why the options cannot be served, or None."""
    if bool(args.jwt_issuer) != bool(args.jwt_key):
        return "--jwt-issuer and --jwt-key go together"
    if args.jwt_issuer and not args.public_url:
        return (
            "--jwt-issuer needs --public-url: a token's audience is this service's URL as "
            "clients see it, and it is never taken from the request's headers"
        )
    if args.public_url and (problem := _public_url_problem(args.public_url)):
        return problem
    return _limits_problem(args)


def _without_password(location: str) -> str:
    """A store location fit for messages: a URL's password replaced by ***."""
    from urllib.parse import urlunsplit

    parts = urlsplit(location)
    if not parts.scheme.startswith("postgres") or parts.password is None:
        return location
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def run(args: argparse.Namespace) -> int:
    from ..extras import require

    require("service")  # fastapi, uvicorn, PyJWT: `pip install 'iechs[service]'`
    from ..audit.stores import open_store
    from ..errors import Problem
    from .core import HookService, ServiceConfig
    from .errors import ServiceError
    from .security import KeyFileError, TokenVerifier

    origins, bad_origin = _origins(args.allow_origin)
    problem = bad_origin or _config_problem(args)
    if problem:
        print(f"iechs serve: {problem}", file=sys.stderr)
        return 2
    config = ServiceConfig(
        store=args.store,
        guideline=args.guideline,
        runtime=args.runtime,
        review_url=args.review_url,
        review_page=args.review_page,
        public_url=args.public_url,
        jwt_issuer=args.jwt_issuer,
        jwt_key=args.jwt_key,
        max_body=args.max_body,
        allow_origins=origins,
        max_token_lifetime=args.max_token_lifetime,
        feedback_per_card=args.feedback_per_card,
        feedback_per_minute=args.feedback_per_minute,
        max_feedback_text=args.max_feedback_text,
        keep_cards_days=args.keep_cards_days,
    )
    if args.jwt_key:
        try:
            TokenVerifier(args.jwt_issuer, args.jwt_key)
        except KeyFileError as exc:
            print(f"iechs serve: {exc}", file=sys.stderr)
            return 2
    shown = _without_password(args.store)
    service = HookService(config)  # loads and compiles the guideline: bad input exits 2
    open_store(args.store, create=False).close()  # an unusable store exits 2 before serving
    try:
        _ = service.tables  # creates the service's tables
    except ServiceError as exc:
        print(f"iechs serve: {Problem(exc.message).render(shown)}", file=sys.stderr)
        return 2
    finally:
        service.close()  # the service's thread opens its own connections

    import uvicorn

    from .app import CONFIG_ENV, build, config_env, review_page

    _, no_page = review_page(config, service.g.sha256)
    if args.review_page and no_page:
        print(f"iechs serve: {no_page}", file=sys.stderr)
        return 2
    workers = args.workers if args.workers is not None else default_workers()
    meta = service.g.guideline
    if not args.host.startswith(_LOOPBACK) and not args.jwt_issuer:
        print(
            f"iechs serve: warning: listening on {args.host} without --jwt-issuer: anyone who "
            "can reach this port can read patients' episodes and write feedback",
            file=sys.stderr,
        )
    if origins and not args.jwt_issuer:
        print(
            f"iechs serve: warning: --allow-origin without --jwt-issuer: any page of "
            f"{', '.join(origins)} can read patients' episodes and write feedback",
            file=sys.stderr,
        )
    if no_page:
        print(f"iechs serve: warning: /review: {no_page}", file=sys.stderr)
    print(
        f"iechs serve: http://{args.host}:{args.port}/cds-services — store {shown}, "
        f"guideline {meta.id} {meta.version}, {workers} worker process(es)",
        file=sys.stderr,
        flush=True,
    )
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": "warning",
        "access_log": args.access_log,
        # X-Forwarded-* only from the proxies named: otherwise anyone on this host could say
        # the request came over https from elsewhere.
        "proxy_headers": args.forwarded_allow_ips is not None,
        "forwarded_allow_ips": args.forwarded_allow_ips,
    }
    if workers == 1:
        uvicorn.run(build(config, service), **options)
        return 0
    # Several processes (`workers`), each building the app from the configuration checked
    # above, which they read from the environment.
    from .workers import serve_workers

    os.environ[CONFIG_ENV] = config_env(config)
    app_path = "iechs.service.app:worker_app"
    return serve_workers(
        uvicorn.Config(app_path, factory=True, workers=workers, **options), workers
    )
