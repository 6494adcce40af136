"""The service's page and /docs in headless Chromium, with an exported (ONNX) model behind the
service and no network but this machine's loopback: every asset comes from the service itself."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from common.export import export_bundle
from tests.browser import Browser
from tests.test_serve import free_port

TOKEN = "page-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(ray_local, tiny_bundle, tmp_path_factory):
    from ray import serve

    from services.teacher import Teacher

    exported = tmp_path_factory.mktemp("page") / "tiny_onnx"
    export_bundle(tiny_bundle[0], exported)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Teacher.bind(bundle=str(exported), token=TOKEN, max_batch_size=4, batch_wait_ms=10),
              name="teacher", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture
def browser(tmp_path):
    with Browser(tmp_path / "profile") as page:
        yield page


def test_page_transcribes_an_upload_as_the_api_does(service, browser, speech_dir, tmp_path):
    browser.open(f"{service}/")
    browser.wait_for("document.querySelector('#model').textContent.includes('needs a token')")   # 401 so far
    browser.evaluate(f"""(() => {{
        const set = (id, value) => {{ const e = document.getElementById(id); e.value = value;
                                     e.dispatchEvent(new Event('change')); }};
        set('token', {json.dumps(TOKEN)}); set('beam', '4'); set('nbest', '3'); set('ctc_weight', '0.3');
    }})()""")
    model = browser.wait_for("document.querySelector('#model').dataset.name")
    assert model == "tiny_onnx"
    assert "onnx fp32" in browser.evaluate("document.querySelector('#model').textContent")

    wav = speech_dir / "utt1.wav"
    browser.set_files("#file", [wav])
    state = browser.wait_for("['done', 'error'].includes(document.querySelector('#status').dataset.state) && "
                             "document.querySelector('#status').dataset.state")
    assert state == "done", browser.evaluate("document.querySelector('#status').textContent")
    shown = browser.evaluate("""({text: document.querySelector('#text').textContent,
        rows: [...document.querySelectorAll('#nbest-table tbody tr')].map(tr => ({
            text: tr.querySelector('.hyp').textContent, logp: Number(tr.dataset.logp),
            tokens: JSON.parse(tr.dataset.tokens)})),
        stats: document.querySelector('#stats').textContent})""")

    api = httpx.post(f"{service}/v1/transcribe", params={"beam": 4, "nbest": 3, "ctc_weight": 0.3},
                     headers={**AUTH, "Content-Type": "audio/wav"}, content=wav.read_bytes(), timeout=60).json()
    assert shown["text"] == api["text"] == "the bank cut rates"
    assert [(r["text"], r["tokens"]) for r in shown["rows"]] == [(n["text"], n["tokens"]) for n in api["nbest"]]
    assert [r["logp"] for r in shown["rows"]] == pytest.approx([n["logp"] for n in api["nbest"]], abs=1e-6)
    assert api["model"] in shown["stats"]
    assert browser.errors == []
    assert browser.requests and all(u.startswith(service) for u in browser.requests), browser.requests


def test_docs_render_from_the_service_own_assets(service, browser):
    html = httpx.get(f"{service}/docs").text
    assert not re.search(r"""(src|href|url)\s*[:=]\s*['"]https?://""", html), "an asset from another host"
    browser.open(f"{service}/docs")
    paths = browser.wait_for("[...document.querySelectorAll('.opblock-summary-path')]"
                             ".map(e => e.textContent.replace(/\\u200b/g, '')).join(' ')")
    assert "/v1/transcribe" in paths and "/v1/model" in paths
    assert all(u.startswith(service) for u in browser.requests), browser.requests


def test_assets_are_a_fixed_table(service):
    assert httpx.get(f"{service}/static/page.js").headers["content-type"].startswith("text/javascript")
    for name in ("..%2Fteacher.py", "..%2F..%2Fpyproject.toml", "index.html", "%2Fetc%2Fpasswd"):
        assert httpx.get(f"{service}/static/{name}").status_code == 404
