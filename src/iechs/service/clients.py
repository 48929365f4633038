"""Who is calling: the CDS client (the JWT's issuer) and, when its token names one, the tenant
(the healthcare organisation, the JWT's `tenant` claim), and which episodes it may read.

Episodes are keyed by (tenant, patient). A client without a tenant (no JWT, or a JWT without
a `tenant` claim) reads the episode whose id is the patient id, as `iechs run --store` records
it. A client of tenant T reads only `@T/PATIENT` (T percent-encoded, so that the id is never
ambiguous), which is how an episode of that tenant is recorded. A patient id may not start with
`@` (a FHIR id never does): no client can name another tenant's episode.

Cards are issued to a client (issuer and tenant) and take feedback from that client only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import attrs

from .._attrs_code import install

install()  # the classes below take their methods' code from the cache (`iechs._attrs_code`)

__all__ = ["ANONYMOUS", "TENANT_PREFIX", "Client", "tenant_episode_id", "tenant_problem"]

#: How the id of a tenant's episode starts.
TENANT_PREFIX = "@"
_MAX_TENANT = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def tenant_problem(tenant: Any) -> str | None:
    """Why `tenant` (a JWT's `tenant` claim) cannot be used, or None."""
    if not isinstance(tenant, str):
        return "the tenant claim must be a string"
    if not tenant or len(tenant) > _MAX_TENANT or _CONTROL.search(tenant):
        return f"the tenant claim must be 1-{_MAX_TENANT} characters, no control characters"
    return None


def tenant_episode_id(tenant: str, patient: str) -> str:
    """The id under which the episode of `patient` of `tenant` is recorded (`@TENANT/PATIENT`,
    the tenant percent-encoded): what an embedder passes to `RecordedEpisode.start`, or the
    patient id of a timeline run with `iechs run --store`."""
    return f"{TENANT_PREFIX}{quote(tenant, safe='')}/{patient}"


@attrs.frozen
class Client:
    """A caller: `issuer` None when the service requires no JWT."""

    issuer: str | None = None
    tenant: str | None = None
    subject: str | None = None

    @classmethod
    def of(cls, claims: Mapping[str, Any] | None) -> Client:
        """The client of a verified JWT's claims (None: no JWT)."""
        if not claims:
            return ANONYMOUS
        sub = claims.get("sub")
        return cls(
            str(claims["iss"]),
            claims.get("tenant"),
            sub if isinstance(sub, str) and sub else None,
        )

    @property
    def key(self) -> str:
        """What a card issued to this client keeps of it: issuer and tenant."""
        if self.issuer is None:
            return ""
        return json.dumps([self.issuer, self.tenant], separators=(",", ":"))

    @property
    def actor(self) -> str:
        """The audit record's `actor` for what this client records."""
        if self.issuer is None:
            return "cds-client (unauthenticated)"
        actor = f"cds-client {self.issuer}"
        if self.subject:
            actor += f" sub {self.subject}"
        if self.tenant:
            actor += f" tenant {self.tenant}"
        return actor

    def episode_id(self, patient: str) -> str:
        """The episode this client reads for `patient` (a patient id checked not to start with
        `TENANT_PREFIX`)."""
        return patient if self.tenant is None else tenant_episode_id(self.tenant, patient)


ANONYMOUS = Client()
