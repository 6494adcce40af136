"""The service page meets a busy service: it sends the upload again after each 503 (Retry-After,
backoff), shows that it waits, and gives up after its bounded attempts with the server's words.
The page's own files are served by a stub that refuses on cue, so no model and no Ray are needed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from services.teacher import ASSETS, PAGE
from tests.browser import Browser
from tests.test_serve import free_port

ANSWER = {"text": "stocks rose today", "nbest": [{"text": "stocks rose today", "tokens": [3, 4], "logp": -1.5}],
          "duration_s": 1.2, "rtf": 0.01, "model": "stub"}


class BusyStub:
    """The page's routes; /v1/transcribe refuses the next `refusals` uploads, then answers."""

    def __init__(self) -> None:
        self.refusals, self.posts, self.plain_text = 0, 0, False

    async def transcribe(self, request: Request) -> Response:
        await request.body()
        self.posts += 1
        if self.refusals:
            self.refusals -= 1
            if self.plain_text:   # as Ray Serve's proxy refuses past its own queue
                return PlainTextResponse("Request dropped due to backpressure (num_queued_requests=4, "
                                         "max_queued_requests=4).", 503, headers={"Retry-After": "0"})
            return JSONResponse({"detail": "the teacher is busy: retry after 0 s"}, 503,
                                headers={"Retry-After": "0"})
        return JSONResponse(ANSWER)

    def app(self) -> Starlette:
        async def page(_: Request) -> Response:
            return FileResponse(PAGE / "index.html", media_type="text/html")

        async def static(request: Request) -> Response:
            path, media = ASSETS[request.path_params["name"]]
            return FileResponse(path, media_type=media)

        async def model(_: Request) -> Response:
            return JSONResponse({"name": "stub", "form": "bundle", "params": 1, "model": "stub"})

        return Starlette(routes=[Route("/", page), Route("/static/{name}", static), Route("/v1/model", model),
                                 Route("/v1/transcribe", self.transcribe, methods=["POST"])])


@pytest.fixture(scope="module")
def stub() -> Iterator[tuple[BusyStub, str]]:
    service, port = BusyStub(), free_port()
    server = uvicorn.Server(uvicorn.Config(service.app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the stub server did not start"
        time.sleep(0.05)
    yield service, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def upload(browser: Browser, path) -> str:
    """Choose the file, record every status the page shows, and wait for the end: done or error."""
    browser.evaluate("""(() => { window.seen = [];
        new MutationObserver(() => window.seen.push(document.querySelector('#status').dataset.state + ' '
            + document.querySelector('#status').textContent))
          .observe(document.querySelector('#status'), {childList: true, characterData: true, subtree: true,
                                                       attributes: true}); })()""")
    browser.set_files("#file", [path])
    return browser.wait_for("['done', 'error'].includes(document.querySelector('#status').dataset.state) && "
                            "document.querySelector('#status').dataset.state")


def test_the_page_retries_a_busy_service_then_gives_up(stub, speech_dir, tmp_path):
    service, url = stub
    with Browser(tmp_path / "profile") as browser:
        browser.open(f"{url}/")
        browser.wait_for("document.querySelector('#model').dataset.name")
        service.refusals, service.posts = 2, 0
        assert upload(browser, speech_dir / "utt0.wav") == "done"
        assert service.posts == 3
        assert browser.evaluate("document.querySelector('#text').textContent") == ANSWER["text"]
        seen = browser.evaluate("window.seen")
        assert any(s.startswith("retrying ") and "busy" in s and "attempt 2 of 5" in s for s in seen), seen
        assert any("attempt 3 of 5" in s for s in seen), seen

        service.refusals, service.posts, service.plain_text = 100, 0, True
        began = time.monotonic()
        assert upload(browser, speech_dir / "utt1.wav") == "error"
        assert service.posts == 5 and time.monotonic() - began >= 0.5 * (0.5 + 1 + 2 + 4) - 0.5
        status = browser.evaluate("document.querySelector('#status').textContent")
        assert "503 Request dropped due to backpressure" in status and "still busy after 5 attempts" in status
        assert browser.errors == []
