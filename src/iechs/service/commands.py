"""`iechs serve`: the CDS Hooks service over an audit store.

Imports nothing heavy until `run` (FastAPI, uvicorn and the engine load only when serving).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["HELP", "configure", "run"]

HELP = "serve CDS Hooks (patient-view, order-sign, feedback) over an audit store"
_LOOPBACK = ("127.", "::1", "localhost")


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
        help="this service's base URL as clients see it (JWT audience, links); default: the "
        "request's",
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
        "--max-body",
        type=int,
        default=1 << 20,
        metavar="BYTES",
        help="largest request body accepted (default 1 MiB; larger: 413)",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (uvicorn's access log)"
    )


def _without_password(location: str) -> str:
    """A store location fit for messages: a URL's password replaced by ***."""
    from urllib.parse import urlsplit, urlunsplit

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

    if bool(args.jwt_issuer) != bool(args.jwt_key):
        print("iechs serve: --jwt-issuer and --jwt-key go together", file=sys.stderr)
        return 2
    if args.max_body < 1:
        print("iechs serve: --max-body must be at least 1", file=sys.stderr)
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
        _ = service.issued  # creates the table of issued cards
    except ServiceError as exc:
        print(f"iechs serve: {Problem(exc.message).render(shown)}", file=sys.stderr)
        return 2
    finally:
        service.close()  # the service's thread opens its own connections

    import uvicorn

    from .app import build, review_page

    _, no_page = review_page(config, service.g.sha256)
    if args.review_page and no_page:
        print(f"iechs serve: {no_page}", file=sys.stderr)
        return 2
    app = build(config, service)
    meta = service.g.guideline
    if not args.host.startswith(_LOOPBACK) and not args.jwt_issuer:
        print(
            f"iechs serve: warning: listening on {args.host} without --jwt-issuer: anyone who "
            "can reach this port can read patients' episodes and write feedback",
            file=sys.stderr,
        )
    if no_page:
        print(f"iechs serve: warning: /review: {no_page}", file=sys.stderr)
    print(
        f"iechs serve: http://{args.host}:{args.port}/cds-services — store {shown}, "
        f"guideline {meta.id} {meta.version}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=args.access_log,
    )
    return 0
