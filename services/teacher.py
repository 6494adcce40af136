"""The teacher as a Ray Serve deployment behind FastAPI: batched beam search over HTTP.

Requests from many clients are gathered by `@serve.batch` into one batched beam search
(grouped by decode options, since one search runs one setting). Audio is decoded in the
request handler, so a bad upload fails alone with a 4xx and never reaches the batch; the
beam search runs in a worker thread, so /healthz answers while a batch decodes.

Load is bounded (`services/overload.py`): a replica holds the batch it decodes and
`max_queued_requests` more transcriptions, and refuses the next one in milliseconds with 503,
`Retry-After` and a one-line JSON `detail`. Ray Serve is given room past that bound
(`deployment_options`), so a refusal is ours rather than a wait in Ray's proxy; Ray's own
per-caller queue is bounded too, as a fence for floods past that room, and its refusal is a
503 with `Retry-After` but a plain-text body (Ray 2.60 lets a deployment choose the status and
Retry-After of that answer, not its body). A client that disconnects cancels its request, and
a cancelled request is dropped from the batch it was waiting for.

    serve run conf/serve.yaml                       # the Serve config (autoscaling)
    seqkd serve runs/teacher/bundle --port 8000     # the same app from the command line

`/` is a page to try it from a browser (upload or record, see the N-best); it and the `/docs`
page load only assets this service serves (`services/page/`, swagger-ui from the
swagger-ui-py package), so both work on a cluster without internet access.
"""
# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime.

import asyncio
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import swagger_ui
from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from ray import serve
from ray.serve.config import BackpressureConfig

from common.audio import AudioError, AudioLimits, AudioTooLongError
from common.beam_search import BeamConfig
from common.kd import KDConfig
from common.teachers import TeacherFiles, load_transcriber, teacher_files
from services.overload import Admission, Busy
from services.requests import Limits, check_token, parse

TOKEN_ENV = "SEQKD_TOKEN"
MAX_BATCH_SIZE = 16
# A replica holds one batch being decoded and this many transcriptions waiting (64 in all with
# batches of 16, what a replica held before the bound): on the demo teacher (2 cores, 3-s FLACs,
# beam 4) a few seconds of work, so an admitted request is answered well inside a client's timeout.
MAX_QUEUED_REQUESTS = 48
RETRY_AFTER_S = 1.0

app = FastAPI(title="seqkd teacher", version="1", docs_url=None, redoc_url=None,
              description="Beam-search transcription by a seqkd teacher bundle (N-best with scores).")
PAGE = Path(__file__).parent / "page"
SWAGGER = Path(swagger_ui.__file__).parent / "static"   # Swagger UI 5: reads FastAPI's OpenAPI 3.1
# The only files the service sends: a fixed table, so no request names a path on the server.
ASSETS = {"page.js": (PAGE / "page.js", "text/javascript"), "page.css": (PAGE / "page.css", "text/css"),
          "favicon.svg": (PAGE / "favicon.svg", "image/svg+xml"),
          "swagger-ui-bundle.js": (SWAGGER / "swagger-ui-bundle.js", "text/javascript"),
          "swagger-ui.css": (SWAGGER / "swagger-ui.css", "text/css")}


# What a client may see of a bundle's meta.json: how the model was trained and how it scored.
# An allow-list, since meta.json also holds the server's paths (train_data, dev_data) and may
# gain more fields; what is not named here is not sent. A KD bundle's settings go as `kd`, read
# through `common.kd.KDConfig` (its fields, nothing else).
PUBLIC_META = ("recipe", "targets", "epochs", "steps", "step", "best_step", "dev_wer", "best_dev_wer",
               "stopped_early", "train_seconds", "teacher_id", "k", "max_wer", "label_beam",
               "teacher_kind", "precision")


def public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    public = {key: meta[key] for key in PUBLIC_META if key in meta}
    if meta.get("targets") == "kd":
        public["kd"] = asdict(KDConfig.from_meta(meta))
    return public


def check_load_limits(max_batch_size: int, max_queued_requests: int, retry_after_s: float) -> None:
    """One line for a bound that cannot work, from the command line or conf/serve.yaml alike."""
    if not (isinstance(max_batch_size, int) and max_batch_size >= 1):
        raise ValueError(f"max_batch_size must be an integer >= 1, not {max_batch_size!r}")
    if not (isinstance(max_queued_requests, int) and max_queued_requests >= 0):
        raise ValueError(f"max_queued_requests must be an integer >= 0, not {max_queued_requests!r}")
    if not (isinstance(retry_after_s, (int, float)) and 0 <= retry_after_s < float("inf")):
        raise ValueError(f"retry_after_s must be a finite number >= 0, not {retry_after_s!r}")


def deployment_options(max_batch_size: int = MAX_BATCH_SIZE, max_queued_requests: int = MAX_QUEUED_REQUESTS,
                       retry_after_s: float = RETRY_AFTER_S) -> dict[str, Any]:
    """Ray Serve's options for a Teacher with these limits.

    A replica admits max_batch_size + max_queued_requests transcriptions and refuses the next
    itself, so Ray must hand it more than that: as many again (at least 32) as room for the
    refusals, which take a millisecond each, and for health checks and page loads. Ray's proxy
    (or a DeploymentHandle's router) is bounded too, at as many per caller, and past that answers
    503 + Retry-After itself. Ray counts there every request not yet assigned to a replica, a burst
    arriving at once included (measured: with Ray's bound at 2, 20 requests at once to a replica
    with room for 36 had most refused by Ray's proxy), so a smaller bound there would refuse what
    a replica can take, in plain text."""
    check_load_limits(max_batch_size, max_queued_requests, retry_after_s)
    admitted = max_batch_size + max_queued_requests
    room = admitted + max(32, admitted)
    return {"max_ongoing_requests": room, "max_queued_requests": room,
            "backpressure_config": BackpressureConfig(retry_after_s=retry_after_s)}


def memory() -> dict[str, int | None]:
    """This process's resident and peak resident memory in bytes, from /proc (None elsewhere)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return {"rss_bytes": None, "peak_rss_bytes": None}
    kb = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
          if line.startswith(("VmRSS:", "VmHWM:"))}
    return {"rss_bytes": kb["VmRSS"] * 1024, "peak_rss_bytes": kb["VmHWM"] * 1024}


@app.exception_handler(Busy)
async def refuse_busy(_: Request, exc: Busy) -> JSONResponse:
    """The refusal a load balancer or a retrying client can act on: 503, when, and why in one line."""
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": exc.retry_after_header()})


@serve.deployment(ray_actor_options={"num_cpus": 1}, **deployment_options())
@serve.ingress(app)
class Teacher:
    def __init__(self, bundle: str, token: str | None = None, max_batch_size: int = MAX_BATCH_SIZE,
                 batch_wait_ms: float = 20.0, max_upload_bytes: int = Limits.max_upload_bytes,
                 max_duration_s: float = Limits.max_duration_s, device: str = "auto",
                 max_queued_requests: int = MAX_QUEUED_REQUESTS, retry_after_s: float = RETRY_AFTER_S,
                 compute_type: str = "auto", language: str | None = None) -> None:
        """`bundle`: any kind of teacher (common.teachers); `compute_type` and `language` are a
        Whisper teacher's."""
        check_load_limits(max_batch_size, max_queued_requests, retry_after_s)
        self.transcriber = load_transcriber(bundle, device, compute_type, language,
                                            limits=AudioLimits(max_duration_s=max_duration_s))
        self.files = teacher_files(bundle)
        self.limits = Limits(max_upload_bytes=max_upload_bytes, max_duration_s=max_duration_s)
        self.token = token or os.environ.get(TOKEN_ENV) or None
        self.admission = Admission(max_batch_size + max_queued_requests, retry_after_s)
        self.decoded = 0
        self.decode_batch.set_max_batch_size(max_batch_size)
        self.decode_batch.set_batch_wait_timeout_s(batch_wait_ms / 1000.0)
        described = self.transcriber.describe()
        self.info = {**described, "meta": public_meta(described["meta"]),
                     "limits": asdict(self.limits), "max_batch_size": max_batch_size,
                     "max_queued_requests": max_queued_requests}

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        """The page to try the service from a browser (no token needed to load it)."""
        return FileResponse(PAGE / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str) -> FileResponse:
        if name not in ASSETS:
            raise HTTPException(404, f"no asset {name!r}")
        path, media = ASSETS[name]
        return FileResponse(path, media_type=media)

    @app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        """Swagger UI from this service's own assets (FastAPI's default loads them from a CDN)."""
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title}: API",
                                   swagger_js_url=f"{root}/static/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/static/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/static/favicon.svg")

    @app.get("/v1/model")
    async def model(self, request: Request) -> dict:
        check_token(request, self.token)
        return self.info

    @app.post("/v1/transcribe")
    async def transcribe(self, request: Request) -> dict:
        """Audio as a raw body (audio/*) or multipart field `file`; options in the query or form.
        503 + Retry-After, before the body is read, when the replica holds all it may."""
        check_token(request, self.token)
        with self.admission.slot():
            audio, options = await parse(request, self.limits)
            cfg = options.beam_config()
            try:
                self.files.check_config(cfg)
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from None
            try:
                wave = await asyncio.to_thread(self.transcriber.load, audio)
            except AudioTooLongError as exc:
                raise HTTPException(413, str(exc)) from None
            except AudioError as exc:
                raise HTTPException(422, f"unusable audio: {exc}") from None
            return await self.decode_batch((wave, cfg))

    def teacher_id(self) -> str:
        return self.info["model"]

    def teacher_files(self) -> TeacherFiles:
        """The teacher's kind, id and tokenizer file, which pseudo labels record."""
        return self.files

    async def decode(self, audio: bytes, options: dict[str, Any] | None = None) -> dict:
        """The same decode for Python callers (a DeploymentHandle), e.g. the labeling job.

        Only audio bytes, as over HTTP: a string would be read as a path on the replica. Held to
        the same bound as HTTP requests (one fleet, one queue): past it, raises Busy."""
        if not isinstance(audio, (bytes, bytearray, memoryview)):
            raise TypeError(f"Teacher.decode takes the audio's bytes, not {type(audio).__name__}: "
                            f"the service never reads server paths")
        with self.admission.slot():
            wave = await asyncio.to_thread(self.transcriber.load, bytes(audio))
            return await self.decode_batch((wave, BeamConfig(**(options or {}))))

    def stats(self) -> dict[str, Any]:
        """What a load test reads: the bound's counts, utterances decoded, and this replica's
        memory (resident and peak, bytes; None off Linux)."""
        return {**self.admission.counts(), "decoded": self.decoded, "pid": os.getpid(), **memory()}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def decode_batch(self, items: list[tuple[Any, BeamConfig]]) -> list[dict]:
        """One batched beam search per distinct option set in the batch; answers in request order."""
        groups: dict[tuple, list[int]] = {}
        for i, (_, cfg) in enumerate(items):
            groups.setdefault(tuple(sorted(asdict(cfg).items())), []).append(i)
        out: list[dict] = [{} for _ in items]
        self.decoded += len(items)
        for idx in groups.values():
            cfg = items[idx[0]][1]
            results = await asyncio.to_thread(self.transcriber.transcribe_waves,
                                              [items[i][0] for i in idx], cfg)
            for i, result in zip(idx, results):
                out[i] = {**result.as_dict(), "model": self.info["model"]}
        return out


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for `serve run conf/serve.yaml` (args: the Teacher's arguments). The
    deployment options follow the load limits in args, where the config file does not set them."""
    args = dict(args)
    bundle = args.pop("bundle", None)
    if not bundle:
        raise ValueError("serve config: `args.bundle` (the teacher bundle directory) is required")
    limits = {k: args[k] for k in ("max_batch_size", "max_queued_requests", "retry_after_s") if k in args}
    return Teacher.options(**deployment_options(**limits)).bind(bundle=str(bundle), **args)
