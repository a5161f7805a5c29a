"""Errors the service answers with, and the one handler that renders them.

Every error response has the body {"error": {"code": ..., "message": ...}}: the message is written
for a shopper, and no internals (SQL, stack traces, upstream bodies) ever reach it.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

# -- domain errors: raised by the data layer, which knows nothing of HTTP ---------------------


class NotFoundError(LookupError):
    """A conversation or message does not exist, or belongs to another session."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what  # "conversation" or "message": what the shopper is told was not found


class StoreUnavailable(Exception):
    """The database could not be reached in acceptable time."""


# -- HTTP errors -------------------------------------------------------------------------------


class AppError(Exception):
    """An error with an HTTP status, a stable code and a message a shopper can read."""

    status = 500
    code = "internal_error"
    message = "Something went wrong on our side. Please try again."

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.headers = headers or {}


class BadRequest(AppError):
    """The request body or parameters are not what the endpoint accepts."""

    status = 400
    code = "bad_request"
    message = "The request is not valid."


class Unauthorized(AppError):
    """The request lacks the bearer token this endpoint asks for."""

    status = 401
    code = "unauthorized"
    message = "A valid bearer token is required."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(AppError):
    """The session or message does not exist, or is not the caller's."""

    status = 404
    code = "not_found"
    message = "Not found."


class SignInRequired(AppError):
    """A staff endpoint was called without a live staff session (the cookie of /admin/login)."""

    status = 401
    code = "sign_in_required"
    message = "Please sign in."


class CsrfRefused(AppError):
    """A state-changing staff request without the session's CSRF token."""

    status = 403
    code = "csrf_refused"
    message = "This request is missing its security token. Please reload the page."


class OwnerOnly(AppError):
    """The page is for the site's owners (its numbers include what the site costs)."""

    status = 403
    code = "owner_only"
    message = "Only an owner of this site can see its analytics."


class Conflict(AppError):
    """The action does not fit the conversation's current status."""

    status = 409
    code = "conflict"
    message = "The conversation changed meanwhile. Please reload it."


class PayloadTooLarge(AppError):
    """The request body is larger than the service reads."""

    status = 413
    code = "payload_too_large"
    message = "The request is too large."


class UnsupportedMediaType(AppError):
    """The request body is not JSON."""

    status = 415
    code = "unsupported_media_type"
    message = "Send the request as JSON (Content-Type: application/json)."


class RateLimited(AppError):
    """The caller went over one of the rate limits."""

    status = 429
    code = "rate_limited"
    message = "Too many messages. Please wait a moment and try again."

    def __init__(self, message: str | None = None, *, retry_after: int, limit: str = "",
                 headers: dict[str, str] | None = None):
        merged = {"Retry-After": str(max(1, retry_after)), **(headers or {})}
        super().__init__(message, headers=merged)
        self.retry_after = max(1, retry_after)
        self.limit = limit


class ServiceUnavailable(AppError):
    """A dependency the request needs (database, model) is not answering."""

    status = 503
    code = "service_unavailable"
    message = "The assistant is temporarily unavailable. Please try again in a moment."


class BudgetExhausted(ServiceUnavailable):
    """The deployment's daily token budget is spent: no more paid calls today."""

    code = "budget_exhausted"
    message = "The assistant is temporarily unavailable. Please try again later."


class DatabaseUnavailable(ServiceUnavailable):
    """The database could not be reached in acceptable time."""

    code = "database_unavailable"


class GatewayTimeout(AppError):
    """The answer took longer than a non-streaming request may wait."""

    status = 504
    code = "timeout"
    message = "The answer took too long. Please try again."


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


async def app_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status,
                        headers=exc.headers)


def as_http_error(exc: Exception) -> AppError:
    """The one place where a domain error becomes an HTTP one."""
    if isinstance(exc, NotFoundError):
        return NotFound(f"This {exc.what} was not found.")
    if isinstance(exc, StoreUnavailable):
        return DatabaseUnavailable()
    raise TypeError(f"not a domain error: {exc!r}")


async def domain_error_handler(request: Request, exc: Exception) -> Response:
    return await app_error_handler(request, as_http_error(exc))


_HTTP_CODES = {
    400: ("bad_request", "The request is not valid."),
    404: ("not_found", "Not found."),
    405: ("method_not_allowed", "This method is not allowed here."),
}


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 and friends, in the canonical shape."""
    assert isinstance(exc, HTTPException)
    code, message = _HTTP_CODES.get(exc.status_code, ("http_error", "The request failed."))
    return JSONResponse(error_body(code, message), status_code=exc.status_code,
                        headers=dict(exc.headers or {}))


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    """Last resort: a bug must still answer in the canonical shape, never with a traceback."""
    return JSONResponse(error_body(AppError.code, AppError.message), status_code=500)
