"""Turning an HTTP request into (audio bytes, decode options), or a 4xx with a one-line reason.

Everything a client controls is checked here before a byte reaches a decoder: the bearer
token (constant-time), the media type, the body size (Content-Length and the bytes actually
received), the multipart shape, and every option. The body is only ever treated as audio
bytes; nothing in a request is used as a server path.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import UploadFile

from common.beam_search import BeamConfig

RAW_TYPES = ("audio/", "application/octet-stream", "video/")   # video/: containers with audio
MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 20 * 1024 * 1024
    max_duration_s: float = 60.0


class DecodeOptions(BaseModel):
    """Query (or form) options of /v1/transcribe; unknown ones are errors, not ignored."""

    model_config = ConfigDict(extra="forbid")

    beam: int = Field(10, ge=1, le=32)
    nbest: int = Field(1, ge=1)
    ctc_weight: float = Field(0.0, ge=0.0, le=1.0)
    length_penalty: float = Field(1.0, ge=0.0, le=5.0)
    ctc_window: int = Field(0, ge=0, le=10_000)

    @field_validator("ctc_weight", "length_penalty")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    def beam_config(self) -> BeamConfig:
        if self.nbest > self.beam:
            raise HTTPException(422, f"nbest ({self.nbest}) must be <= beam ({self.beam})")
        cfg = BeamConfig(beam=self.beam, nbest=self.nbest, ctc_weight=self.ctc_weight,
                         length_penalty=self.length_penalty, ctc_window=self.ctc_window)
        try:
            cfg.validate()
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return cfg


def check_token(request: Request, token: str | None) -> None:
    if not token:
        return
    header = request.headers.get("authorization")
    challenge = {"WWW-Authenticate": "Bearer"}
    if header is None:
        raise HTTPException(401, "missing bearer token: send `Authorization: Bearer <token>`",
                            headers=challenge)
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise HTTPException(401, "malformed Authorization header: expected `Bearer <token>`",
                            headers=challenge)
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "invalid bearer token", headers=challenge)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing early (Content-Length) or while streaming when over `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise HTTPException(413, f"upload is {int(declared)} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse(request: Request, limits: Limits) -> tuple[bytes, DecodeOptions]:
    """(audio bytes, options) from a raw-body or multipart request."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not media:
        raise HTTPException(415, "missing Content-Type: send audio/* (e.g. audio/wav), "
                                 "application/octet-stream or multipart/form-data")
    if media != MULTIPART and not media.startswith(RAW_TYPES):
        raise HTTPException(415, f"unsupported media type {media!r}: send audio/* (e.g. audio/wav), "
                                 "application/octet-stream or multipart/form-data")
    options = dict(request.query_params)
    if len(request.query_params.multi_items()) != len(options):
        raise HTTPException(422, "an option is given more than once")
    body = await read_body(request, limits.max_upload_bytes)
    if media == MULTIPART:
        body, form_options = await _multipart(request, body)
        twice = set(options) & set(form_options)
        if twice:
            raise HTTPException(422, f"option {sorted(twice)[0]!r} given both in the query and the form")
        options.update(form_options)
    if not body:
        raise HTTPException(400, "empty audio: the upload has 0 bytes")
    try:
        parsed = DecodeOptions.model_validate(options)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "options"
        msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
        raise HTTPException(422, f"{name}: {msg}") from None
    return body, parsed


async def _multipart(request: Request, body: bytes) -> tuple[bytes, dict[str, str]]:
    """The one file (field `file`) and the text fields of an already size-checked multipart body."""
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except Exception as exc:   # python-multipart's errors have no common base worth naming
        raise HTTPException(400, f"malformed multipart body: {str(exc).splitlines()[0] or 'parse error'}") \
            from None
    files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
    fields = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
    if not files:
        raise HTTPException(400, "multipart upload has no file: send the audio in a field named `file`")
    if len(files) > 1:
        raise HTTPException(400, f"multipart upload has {len(files)} files; send exactly one, "
                                 "in the field `file`")
    name, upload = files[0]
    if name != "file":
        raise HTTPException(400, f"the audio must be in a form field named `file`, not {name!r}")
    return await upload.read(), fields
