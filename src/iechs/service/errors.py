"""What the service answers when it cannot: an HTTP status and one message naming the field."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ServiceError", "bad_request"]


class ServiceError(Exception):
    """A request the service refuses (4xx) or cannot serve now (503); nothing was changed.
    `headers` go with the answer (e.g. `retry-after` with a 429)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def bad_request(path: str, message: str) -> ServiceError:
    """400 for the field at `path` (`$.context.patientId`-style)."""
    return ServiceError(400, f"{path}: {message}")
