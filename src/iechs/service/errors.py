"""What the service answers when it cannot: an HTTP status and one message naming the field."""

from __future__ import annotations

__all__ = ["ServiceError", "bad_request"]


class ServiceError(Exception):
    """A request the service refuses (4xx) or cannot serve now (503); nothing was changed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(path: str, message: str) -> ServiceError:
    """400 for the field at `path` (`$.context.patientId`-style)."""
    return ServiceError(400, f"{path}: {message}")
