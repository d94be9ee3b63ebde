"""One OpenAI error shape for every failure, and the handlers that produce it.

Code raises a typed :class:`APIError`; nothing else decides a status or an error body.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("spaceserve.base.errors")


class APIError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


class InvalidRequest(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class AuthenticationFailed(APIError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class MethodNotAllowed(APIError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class RequestTimeout(APIError):
    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class ClientGone(APIError):
    # nginx's "client closed request"; nobody receives it, but the access log shows it.
    status_code = 499
    error_type = "client_closed_request"
    default_code = "client_closed_request"


class PayloadTooLarge(APIError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(APIError):
    status_code = 429
    error_type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"


class ServiceUnavailable(APIError):
    status_code = 503
    error_type = "service_unavailable"


class Misconfigured(APIError):
    """The server runs but will never serve as configured (no key on a public host, the model failed
    to load). A 500, not a 503: clients retry a 503 at once and forever; this needs the operator."""

    status_code = 500
    error_type = "server_error"
    default_code = "misconfigured"


class InternalError(APIError):
    status_code = 500
    error_type = "server_error"
    default_code = "internal_error"


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if not loc and first.get("type") in ("model_attributes_type", "dict_type"):
        return "request body must be a JSON object (send it with Content-Type: application/json)", None
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        return f"missing required parameter: '{param}'", param
    if param:
        message = f"invalid value for '{param}': {message}"
    return message, param


def _answer(request: Request, error: APIError) -> JSONResponse:
    # Tell the request's record (spaceserve.requestlog; looked up, not imported, to avoid an import
    # cycle) which error ended it, for the access log and the metrics (queue_full, for instance).
    record = request.scope.get("state", {}).get("record")
    if record is not None and record.error_code is None:
        record.failed(error)
    return error.response()


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return _answer(request, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = _validation_message(exc)
    return _answer(request, InvalidRequest(message, param=param))


_HTTP_ERRORS: dict[int, type[APIError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    cls = _HTTP_ERRORS.get(exc.status_code)
    if cls is AuthenticationFailed:
        return AuthenticationFailed(str(exc.detail)).response()
    if cls is None:
        error = APIError(str(exc.detail))
        error.status_code = exc.status_code
        return error.response()
    return cls(str(exc.detail)).response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log; the caller learns only that it was our fault.
    log.error("unhandled error", exc_info=exc)
    return _answer(request, InternalError("internal server error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
