"""The gateway's error tree, and the one place backend errors are translated into it.

    LmgateError                      500 internal_error          INTERNAL
    ├── InvalidRequestError          400 invalid_request_error   INVALID_ARGUMENT
    ├── AuthenticationError          401 invalid_request_error   UNAUTHENTICATED
    ├── PermissionDeniedError        403 invalid_request_error   PERMISSION_DENIED   (a key outside its endpoints)
    ├── ModelNotFoundError           404 invalid_request_error   NOT_FOUND
    ├── NotFoundError                404 invalid_request_error   NOT_FOUND           (a stored response)
    ├── ClientTimeoutError           408 invalid_request_error   DEADLINE_EXCEEDED   (the body came too slowly)
    ├── PayloadTooLargeError         413 invalid_request_error   INVALID_ARGUMENT
    ├── RateLimitError               429 rate_limit_error        RESOURCE_EXHAUSTED  (+ Retry-After)
    │   └── QuotaExceededError       429 rate_limit_error        RESOURCE_EXHAUSTED  (a key's own limit, named)
    ├── ServiceUnavailableError      503 service_unavailable     UNAVAILABLE         (+ Retry-After if known)
    └── RequestTimeoutError          504 timeout                 DEADLINE_EXCEEDED
    ClientDisconnected               (nothing is sent)                                (counted as aborted)

Each class knows its HTTP status, its OpenAI error ``type``, its gRPC status name and the
``outcome`` that metrics and the request log show (the error type, except where OpenAI's type
lumps apart cases an operator tells apart: ``model_not_found``, ``unauthenticated``,
``payload_too_large``, ``client_timeout``). The HTTP app renders them as OpenAI-shaped bodies
(``{"error": {"message", "type", "param", "code"}}``). Messages name the field, the value and the
fix; a value the client sent is quoted short (``quote_value``), never at any length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from lmgate.backends.errors import (
    QUOTE_LIMIT,
    BackendError,
    BackendUnavailable,
    InvalidRequest,
    field_problem,
    quote_value,
)


class ClientDisconnected(Exception):
    """The client closed the connection before its response was ready: not an error of the request
    (no status to send), an outcome (``aborted``)."""


class LmgateError(Exception):
    http_status: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    grpc_status: ClassVar[str] = "INTERNAL"
    outcome_name: ClassVar[str | None] = None
    retry_after_s: int | None = None
    """Seconds after which the same request may succeed (HTTP Retry-After, gRPC ``retry-after``)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    @property
    def outcome(self) -> str:
        """The request's outcome in metrics (``lmgate_requests_total{status}``) and the request log."""
        return self.outcome_name or self.error_type

    def body(self) -> dict[str, Any]:
        """The OpenAI error body."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class InvalidRequestError(LmgateError):
    http_status = 400
    error_type = "invalid_request_error"
    grpc_status = "INVALID_ARGUMENT"


class ModelNotFoundError(LmgateError):
    http_status = 404
    error_type = "invalid_request_error"
    grpc_status = "NOT_FOUND"
    outcome_name = "model_not_found"

    def __init__(self, model: str, known: list[str]) -> None:
        name = model if len(model) <= QUOTE_LIMIT else quote_value(model)  # a client's 100 KB name is not echoed
        super().__init__(
            f"The model `{name}` does not exist. Models served here: {', '.join(known) or 'none'}.",
            param="model",
            code="model_not_found",
        )


class NotFoundError(LmgateError):
    """Something a request names by id (a stored response) does not exist, or no longer."""

    http_status = 404
    error_type = "invalid_request_error"
    grpc_status = "NOT_FOUND"
    outcome_name = "not_found"


class AuthenticationError(LmgateError):
    http_status = 401
    error_type = "invalid_request_error"
    grpc_status = "UNAUTHENTICATED"
    outcome_name = "unauthenticated"

    def __init__(self, message: str = "Missing or invalid API key: send `Authorization: Bearer <key>`.") -> None:
        super().__init__(message, code="invalid_api_key")


class PermissionDeniedError(LmgateError):
    """The API key is valid but not allowed this endpoint (its ``endpoints``)."""

    http_status = 403
    error_type = "invalid_request_error"
    grpc_status = "PERMISSION_DENIED"
    outcome_name = "permission_denied"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="permission_denied")


class ClientTimeoutError(LmgateError):
    http_status = 408
    error_type = "invalid_request_error"
    grpc_status = "DEADLINE_EXCEEDED"
    outcome_name = "client_timeout"


class PayloadTooLargeError(LmgateError):
    http_status = 413
    error_type = "invalid_request_error"
    grpc_status = "INVALID_ARGUMENT"
    outcome_name = "payload_too_large"


class RateLimitError(LmgateError):
    """The model's running and waiting limits are full; retry after ``retry_after_s``."""

    http_status = 429
    error_type = "rate_limit_error"
    grpc_status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, code="rate_limit_exceeded")
        self.retry_after_s = retry_after_s


class QuotaExceededError(RateLimitError):
    """One API key's own limit (``limit``: requests_per_minute, tokens_per_minute, max_concurrent) is spent;
    ``retry_after_s`` is when its bucket holds enough again."""

    outcome_name = "quota_exceeded"

    def __init__(self, message: str, *, limit: str, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.limit = limit
        self.code = f"{limit}_exceeded"


class RequestTimeoutError(LmgateError):
    http_status = 504
    error_type = "timeout"
    grpc_status = "DEADLINE_EXCEEDED"


class ServiceUnavailableError(LmgateError):
    http_status = 503
    error_type = "service_unavailable"
    grpc_status = "UNAVAILABLE"

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


def from_backend_error(exc: BackendError) -> LmgateError:
    """Translate a backend's error into the gateway's tree (the only place this happens)."""
    if isinstance(exc, InvalidRequest):
        return InvalidRequestError(exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, BackendUnavailable):
        return ServiceUnavailableError(str(exc))
    return LmgateError(str(exc))


def from_validation_errors(errors: Sequence[Any]) -> InvalidRequestError:
    """Pydantic's first complaint as a 400 / INVALID_ARGUMENT naming the field, the value and the rule.

    Shared by both transports: HTTP bodies and gRPC requests are validated by the same models. The
    value is quoted short (``quote_value``) and only for a field: a rule on the whole request names
    its fields in its message, and never echoes the request (the user's conversation) back.
    """
    first: dict[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first["type"] == "json_invalid":
        return InvalidRequestError(f"The request body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
    loc = [str(p) for p in first["loc"] if p != "body"]
    # Unions report each branch ("stop.str", "stop.list[str]"); the field is what the client wrote.
    param = ".".join(p for p in loc if not any(c in p for c in "[]") and p not in {"str", "int"}) or None
    # A validator's own ValueError: its text, without pydantic's "Value error, " before it.
    rule = str(first["ctx"]["error"]) if first["type"] == "value_error" and "ctx" in first else first["msg"]
    whole_request_rule = not loc and first["type"] in ("value_error", "assertion_error")  # its input: the request
    quoted = not (first["type"] == "missing" or whole_request_rule)
    message = field_problem(param, rule, first.get("input"), quoted=quoted, more=len(errors) - 1)
    return InvalidRequestError(message, param=param)
