"""Request bodies in, JSON out: one model per body (unknown keys refused), and errors
as the error's own JSON (errors.py: `{"error", "code", "exit_code", "file_id",
...attributes}`, the message the CLI's one line), so a client rebuilds its class.

Every JSON that leaves the daemon goes through `redact_value`: a URL file_id shows
in its display form, as it does on the CLI's output (`ls` lists everyone's ids).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from ..config import parse_duration
from ..errors import BadRequest, Forbidden, NotReadyError, PrefetchError, UsageError
from ..redact import display_id, redact_value
from ..requests import Options

MAX_IDS = 10_000  # per request, as for a request file
MAX_BODY = 24 << 20  # 10,000 ids of the longest length allowed (2,048 characters) fit

NDJSON = "application/x-ndjson"


class ApiError(Exception):
    """A refusal with its HTTP status, carrying the PrefetchError the client rebuilds
    (`error`); one made from a status and a message alone is a BadRequest when its
    exit code is 2, Forbidden for 403, else a PrefetchError."""

    def __init__(self, status: int, message: str, *, exit_code: int = 1,
                 file_id: str | None = None, error: PrefetchError | None = None) -> None:
        super().__init__(message)
        self.status = status
        if error is None:
            cls = BadRequest if exit_code == 2 else Forbidden if status == 403 else PrefetchError
            error = cls(message, file_id=file_id)
        self.error = error

    @property
    def exit_code(self) -> int:
        return self.error.exit_code

    @property
    def file_id(self) -> str | None:
        return self.error.file_id

    @classmethod
    def of(cls, e: PrefetchError) -> ApiError:
        """A PrefetchError: bad usage is 400, a refusal 403, a path not ready 404; an
        operation that failed, 409."""
        status = (400 if e.exit_code == 2 else 403 if isinstance(e, Forbidden)
                  else 404 if isinstance(e, NotReadyError) else 409)
        return cls(status, str(e), error=e)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(redact_value(body)), status=status,
                        content_type="application/json")


def error_response(e: ApiError) -> web.Response:
    body = e.error.to_json()
    body["file_id"] = display_id(e.file_id) if e.file_id else None
    return json_response(body, e.status)


def ndjson_line(obj: Any) -> bytes:
    return json.dumps(redact_value(obj)).encode() + b"\n"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ids(_Body):
    file_ids: list[StrictStr] = Field(max_length=MAX_IDS)
    holder: StrictStr | None = None  # a sub-holder of the peer (or, for an admin, any)

    def given(self) -> list[str]:
        if not self.file_ids:
            raise UsageError("no file_id given")
        return self.file_ids


class WantBody(Ids):
    provider: StrictStr | None = None
    sha256: StrictStr | None = None
    size: StrictInt | None = None
    dest: StrictStr | None = None
    pin: StrictBool = False
    ttl: StrictStr | float | None = None

    def options(self) -> Options:
        """The socket's one conversion into the want's options."""
        return Options(provider=self.provider, sha256=self.sha256, size=self.size,
                       dest=self.dest, pin=self.pin, ttl=self.ttl)


class ClaimIds(Ids):
    """forget and release: the peer's claims, or with `all` every local claim (admin)."""

    all: StrictBool = False


class GetBody(WantBody):
    timeout: StrictStr | float | None = None

    def timeout_seconds(self) -> float | None:
        if self.timeout is None:
            return None
        try:
            return parse_duration(self.timeout)
        except ValueError as e:
            raise UsageError(f"timeout: {e}") from None


class GcBody(_Body):
    dry_run: StrictBool = False


class VerifyBody(_Body):
    file_ids: list[StrictStr] = Field(default_factory=list, max_length=MAX_IDS)


B = TypeVar("B", bound=BaseModel)


async def parse(request: web.Request, model: type[B]) -> B:
    """The request's JSON body as `model`; ApiError 400 naming what is wrong."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body larger than {MAX_BODY} bytes", exit_code=2) from None
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", exit_code=2) from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", exit_code=2)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(400, describe(e), exit_code=2) from None


def describe(err: ValidationError) -> str:
    """The first problem as `key: what is wrong`, like the config's errors."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "body"
    msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{loc}: {msg}{more}"
