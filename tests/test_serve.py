"""The teacher service over real HTTP on 127.0.0.1: Ray Serve + FastAPI with a trained bundle."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import yaml

from common.audio import load_audio
from tests.audio_files import encode
from tests.conftest import SENTENCES, seqkd

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD = 2_000_000
MAX_DURATION = 20.0
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(ray_local, tiny_bundle):
    from ray import serve

    from services.teacher import Teacher

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Teacher.bind(bundle=str(tiny_bundle[0]), token=TOKEN, max_batch_size=8,
                           batch_wait_ms=50, max_upload_bytes=MAX_UPLOAD,
                           max_duration_s=MAX_DURATION), name="teacher", route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        yield client
    serve.shutdown()


@pytest.fixture(scope="module")
def speech(speech_dir) -> dict[str, bytes]:
    """The four utterances as WAV (espeak's 22.05 kHz), FLAC and MP3 at 16 kHz."""
    out = {}
    for i in range(len(SENTENCES)):
        wave = load_audio(speech_dir / f"utt{i}.wav").numpy()
        out[f"utt{i}.wav"] = (speech_dir / f"utt{i}.wav").read_bytes()
        out[f"utt{i}.flac"] = encode(wave, 16000, "FLAC")
        out[f"utt{i}.mp3"] = encode(wave, 16000, "MP3")
    return out


def post(client: httpx.Client, body: bytes, ctype: str = "audio/wav", params: dict | None = None,
         headers: dict | None = None) -> httpx.Response:
    return client.post("/v1/transcribe", content=body, params=params,
                       headers={**AUTH, "Content-Type": ctype, **(headers or {})})


def nbest(answer: dict) -> list[tuple[str, list[int], float]]:
    return [(n["text"], n["tokens"], round(n["logp"], 3)) for n in answer["nbest"]]


def test_health_model_and_docs(service, tiny_bundle):
    assert service.get("/healthz").json() == {"status": "ok"}
    answer = service.get("/v1/model", headers=AUTH)
    assert answer.status_code == 200, answer.text
    info = answer.json()
    meta = json.loads((tiny_bundle[0] / "meta.json").read_text())
    assert info["params"] == meta["params"] and info["model"] == meta["bundle_id"]
    assert info["vocab_size"] == meta["vocab_size"] and info["config"]["model"]["encoder"]["type"] == "pblstm"
    assert "/v1/transcribe" in service.get("/openapi.json").json()["paths"]
    assert service.get("/docs").status_code == 200


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_model_info_shows_the_model_and_no_server_path(service, tiny_bundle, speech_dir):
    meta = json.loads((tiny_bundle[0] / "meta.json").read_text())
    assert meta["train_data"] == str(speech_dir)   # the bundle holds server paths, as trained ones do
    info = service.get("/v1/model", headers=AUTH).json()
    paths = [s for s in _strings(info) if re.search(r"(^|[\s:=\"'])/\w", s) or str(speech_dir) in s]
    assert not paths, paths
    assert info["meta"] == {"recipe": "tiny", "steps": meta["steps"]}   # training facts only


def test_wav_flac_mp3_raw_and_multipart_equal_seqkd_transcribe(service, speech, speech_dir, tiny_bundle,
                                                               tmp_path):
    params = {"beam": 4, "nbest": 3, "ctc_weight": 0.3}
    files = []
    for name, data in speech.items():
        (tmp_path / name).write_bytes(data)
        files.append(str(tmp_path / name))
    cli = seqkd("transcribe", str(tiny_bundle[0]), *files, "--beam", "4", "--nbest", "3",
                "--ctc-weight", "0.3", "--json", "--device", "cpu")
    assert cli.returncode == 0, cli.stderr
    expected = {Path(j["file"]).name: j for j in map(json.loads, cli.stdout.splitlines())}
    types = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}
    for name, data in speech.items():
        raw = post(service, data, types[name.rsplit(".", 1)[1]], params)
        form = service.post("/v1/transcribe", params=params, headers=AUTH,
                            files={"file": (name, data, "application/octet-stream")})
        for answer in (raw, form):
            assert answer.status_code == 200, answer.text
            got = answer.json()
            assert nbest(got) == nbest(expected[name]), name
            assert got["text"] == expected[name]["text"] and len(got["nbest"]) == 3
            assert got["duration_s"] == pytest.approx(expected[name]["duration_s"], abs=1e-3)
            assert got["rtf"] > 0 and got["model"] == service.get("/v1/model", headers=AUTH).json()["model"]
    assert [expected[f"utt{i}.wav"]["text"] for i in range(4)] == SENTENCES


def test_concurrent_requests_equal_one_at_a_time(service, speech):
    jobs = [(name, data, {"beam": b, "nbest": 2}) for name, data in speech.items() for b in (2, 5)]
    ctype = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}
    alone = [post(service, d, ctype[n.rsplit(".", 1)[1]], p).json() for n, d, p in jobs]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        together = list(pool.map(lambda j: post(service, j[1], ctype[j[0].rsplit(".", 1)[1]], j[2]).json(),
                                 jobs))
    assert [nbest(a) for a in together] == [nbest(a) for a in alone]


def _variants(wave16: np.ndarray) -> dict[str, tuple[bytes, str]]:
    import torch
    import torchaudio.functional as AF

    def at(rate: int) -> np.ndarray:
        return AF.resample(torch.from_numpy(wave16), 16000, rate).numpy()

    stereo = np.stack([wave16, wave16 * 0.8], axis=1)
    return {
        "8 kHz": (encode(at(8000), 8000, "WAV", "PCM_16"), "audio/wav"),
        "44.1 kHz": (encode(at(44100), 44100, "WAV", "PCM_16"), "audio/wav"),
        "48 kHz": (encode(at(48000), 48000, "WAV", "PCM_16"), "audio/x-wav"),
        "stereo": (encode(stereo, 16000, "WAV", "PCM_16"), "audio/wav"),
        "8-bit": (encode(wave16, 16000, "WAV", "PCM_U8"), "audio/wav"),
        "float": (encode(wave16, 16000, "WAV", "FLOAT"), "audio/wav"),
        "mp3 44.1 kHz": (encode(at(44100), 44100, "MP3"), "audio/mpeg"),
        "ogg": (encode(wave16, 16000, "OGG", "VORBIS"), "audio/ogg"),
    }


def test_unusual_but_valid_audio_gives_the_same_answer(service, speech_dir):
    """Lossless variants answer exactly as the 16 kHz mono original. Lossy ones (8 kHz, 8-bit, MP3,
    Vorbis) change the signal enough for a model trained on 4 clean utterances to notice, so they
    must answer as their own decoded signal sent as a 16 kHz float WAV."""
    wave = load_audio(speech_dir / "utt1.wav").numpy()
    want = post(service, encode(wave, 16000, "WAV", "PCM_16"), params={"beam": 4}).json()["text"]
    assert want == SENTENCES[1]
    for name, (data, ctype) in _variants(wave).items():
        answer = post(service, data, ctype, {"beam": 4})
        assert answer.status_code == 200, (name, answer.text)
        expected = want
        if name in ("8 kHz", "8-bit", "mp3 44.1 kHz", "ogg"):
            narrow = encode(load_audio(data).numpy(), 16000, "WAV", "FLOAT")
            expected = post(service, narrow, params={"beam": 4}).json()["text"]
        assert answer.json()["text"] == expected, name
        assert answer.json()["duration_s"] == pytest.approx(len(wave) / 16000, abs=0.06), name


def _wav_header(rate: int, channels: int, data_len: int = 3200) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * max(channels, 1) * 2, max(channels, 1) * 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + data_len) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", data_len))


def _bad_inputs(good: bytes) -> list[tuple[str, dict, int, str]]:
    """(what, request, status, words the one-line message must contain)."""
    nan = np.full(16000, np.nan, dtype=np.float32)
    inf = np.zeros(16000, dtype=np.float32)
    inf[100] = np.inf
    too_long = encode(np.zeros(int(16000 * (MAX_DURATION + 5)), dtype=np.float32), 16000, "FLAC")
    raw = lambda body, ctype="audio/wav", **kw: {"content": body, "headers": {**AUTH, "Content-Type": ctype},
                                                  **kw}
    return [
        ("no body", raw(b""), 400, "empty audio"),
        ("empty multipart file", {"files": {"file": ("a.wav", b"")}, "headers": AUTH}, 400, "empty audio"),
        ("random bytes", raw(np.random.default_rng(0).bytes(5000)), 422, "unusable audio"),
        ("truncated WAV header", raw(good[:30]), 422, "unusable audio"),
        ("WAV data chunk cut short", raw(_wav_header(16000, 1, 32000) + b"\0" * 10), 422, "unusable audio"),
        ("WAV of NaN samples", raw(encode(nan, 16000, "WAV", "FLOAT")), 422, "NaN or infinite"),
        ("WAV with an inf sample", raw(encode(inf, 16000, "WAV", "FLOAT")), 422, "NaN or infinite"),
        ("header claiming 0 Hz", raw(_wav_header(0, 1) + b"\0" * 3200), 422, "unusable audio"),
        ("header claiming 0 channels", raw(_wav_header(16000, 0) + b"\0" * 3200), 422, "unusable audio"),
        ("0 s of audio", raw(_wav_header(16000, 1, 0)), 422, "unusable audio"),
        ("audio longer than the limit", raw(too_long, "audio/flac"), 413, "the limit is 20 s"),
        ("body over the byte limit", raw(b"\0" * (MAX_UPLOAD + 1)), 413, "the limit is 2000000 bytes"),
        ("chunked body over the byte limit",
         raw(iter([b"\0" * 500_000] * 5)), 413, "exceeds the limit"),
        ("wrong form field name", {"files": {"audio": ("a.wav", good)}, "headers": AUTH}, 400,
         "field named `file`"),
        ("two files", {"files": [("file", ("a.wav", good)), ("file", ("b.wav", good))], "headers": AUTH},
         400, "exactly one"),
        ("form without a file", {"data": {"beam": "3"}, "files": {"x": ("", b"")}, "headers": AUTH}, 400,
         "field named `file`"),
        ("wrong content type", raw(good, "text/plain"), 415, "unsupported media type"),
        ("no content type", {"content": good, "headers": {**AUTH, "Content-Type": ""}}, 415,
         "missing Content-Type"),
        ("JSON body instead of audio", {"json": {"audio": "x"}, "headers": AUTH}, 415, "application/json"),
        ("a file path as the body", raw(b"/etc/passwd"), 422, "unusable audio"),
        ("beam 0", raw(good, params={"beam": 0}), 422, "beam"),
        ("beam 1000", raw(good, params={"beam": 1000}), 422, "beam"),
        ("beam abc", raw(good, params={"beam": "abc"}), 422, "beam"),
        ("nbest 0", raw(good, params={"nbest": 0}), 422, "nbest"),
        ("nbest > beam", raw(good, params={"beam": 2, "nbest": 3}), 422, "must be <= beam"),
        ("negative ctc_weight", raw(good, params={"ctc_weight": -0.1}), 422, "ctc_weight"),
        ("ctc_weight > 1", raw(good, params={"ctc_weight": 1.5}), 422, "ctc_weight"),
        ("non-finite length_penalty", raw(good, params={"length_penalty": "nan"}), 422, "length_penalty"),
        ("negative ctc_window", raw(good, params={"ctc_window": -1, "ctc_weight": 0.3}), 422, "ctc_window"),
        ("ctc_window without ctc_weight", raw(good, params={"ctc_window": 4}), 422, "needs ctc_weight > 0"),
        ("unknown query parameter", raw(good, params={"temperature": 1}), 422, "unknown option"),
        ("option given twice", raw(good, params=[("beam", 2), ("beam", 3)]), 422, "more than once"),
        ("missing bearer token", {"content": good, "headers": {"Content-Type": "audio/wav"}}, 401,
         "missing bearer token"),
        ("wrong bearer token", {"content": good, "headers": {"Content-Type": "audio/wav",
                                                             "Authorization": "Bearer nope"}}, 401,
         "invalid bearer token"),
        ("malformed bearer token", {"content": good, "headers": {"Content-Type": "audio/wav",
                                                                 "Authorization": TOKEN}}, 401,
         "malformed Authorization"),
    ]


def test_bad_inputs_get_a_clear_4xx_and_the_service_keeps_serving(service, speech):
    good = speech["utt0.wav"]
    cases = _bad_inputs(good)
    assert len(cases) >= 25
    for what, request, status, words in cases:
        answer = service.post("/v1/transcribe", **request)
        assert answer.status_code == status, (what, answer.status_code, answer.text)
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and words in detail, (what, detail)
        ok = post(service, good, params={"beam": 2})
        assert ok.status_code == 200 and ok.json()["text"] == SENTENCES[0], what
    assert service.get("/v1/model").status_code == 401


def _replica_pid() -> int:
    """This session's teacher replica (Ray titles it `ray::ServeReplica:teacher:Teacher`), found
    among this process's descendants, since other Ray clusters may run on the machine."""
    def parent(pid: int) -> int:
        return int(re.search(r"PPid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parent(pid)
            if pid == os.getpid():
                return True
        return False

    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"ServeReplica:teacher" in (entry / "cmdline").read_bytes() \
                    and ours(int(entry.name)):
                pids.append(int(entry.name))
        except OSError:
            continue
    assert len(pids) == 1, pids
    return pids[0]


def _peak_rss(pid: int) -> int:
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1)) * 1024


def test_hours_of_audio_under_the_upload_limit_get_413_fast(service, speech):
    """A 0.5 MB FLAC of 3 h of silence (690 MB as float32) is refused at once, from its header or,
    with the length left out of the header, after decoding just past the 20 s limit; the replica's
    peak RSS (VmHWM, reset before each request) barely moves and the next request is answered."""
    from tests.test_audio import flac_claiming, silent_flac

    three_hours = silent_flac(3 * 3600)
    assert len(three_hours) < MAX_UPLOAD
    replica = _replica_pid()
    for body, words in ((three_hours, "audio is 10800.0 s long"),
                        (flac_claiming(three_hours, 0), "audio is at least 2")):
        Path(f"/proc/{replica}/clear_refs").write_text("5")   # VmHWM := the current RSS
        before, began = _peak_rss(replica), time.perf_counter()
        answer = post(service, body, "audio/flac")
        elapsed, grown = time.perf_counter() - began, _peak_rss(replica) - before
        assert answer.status_code == 413, answer.text
        assert words in answer.json()["detail"] and "the limit is 20 s" in answer.json()["detail"]
        assert elapsed < 2.0 and grown < 64 * 2**20, (elapsed, grown)
        ok = post(service, speech["utt0.wav"], params={"beam": 2})
        assert ok.status_code == 200 and ok.json()["text"] == SENTENCES[0]


def test_serve_config_is_valid_for_ray_serve(tiny_bundle):
    from ray.serve.schema import ServeDeploySchema

    from services.teacher import build_app, deployment_options

    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "conf" / "serve.yaml").read_text())
    schema = ServeDeploySchema.parse_obj(config)
    app = schema.applications[0]
    assert app.import_path == "services.teacher:build_app"
    deployment = app.deployments[0]
    auto = deployment.autoscaling_config
    auto = auto if isinstance(auto, dict) else auto.dict()
    assert auto["max_replicas"] > auto["min_replicas"] >= 1 and auto["target_ongoing_requests"] > 0
    assert deployment.max_ongoing_requests >= app.args["max_batch_size"]
    # the queue bound: the deployment's options are the ones its args call for (room past the
    # replica's own bound for its refusals, Ray's per-caller queue bounded, Retry-After on both)
    limits = {k: app.args[k] for k in ("max_batch_size", "max_queued_requests", "retry_after_s")}
    want = deployment_options(**limits)
    assert deployment.max_ongoing_requests == want["max_ongoing_requests"] > \
        limits["max_batch_size"] + limits["max_queued_requests"]
    assert deployment.max_queued_requests == want["max_queued_requests"] >= deployment.max_ongoing_requests
    assert deployment.backpressure_config.retry_after_s == app.args["retry_after_s"] > 0
    built = build_app({**app.args, "bundle": str(tiny_bundle[0])})
    assert type(built).__name__ == "Application"
    with pytest.raises(ValueError, match="args.bundle"):
        build_app({})
    with pytest.raises(ValueError, match="max_queued_requests must be an integer >= 0"):
        build_app({**app.args, "bundle": str(tiny_bundle[0]), "max_queued_requests": -1})


def test_no_token_configured_means_open_access():
    from starlette.requests import Request

    from services.requests import check_token

    check_token(Request({"type": "http", "headers": []}), None)   # no exception: open access
    with pytest.raises(Exception, match="missing bearer token"):
        check_token(Request({"type": "http", "headers": []}), "t")


def test_labeling_through_the_deployment_handle(service, synth_corpus, tiny_bundle, tmp_path):
    """`seqkd label --via-serve`: the same N-best as the local teacher, from the Serve fleet."""
    from common.beam_search import BeamConfig
    from common.corpora.manifest import iter_rows
    from common.transcriber import Transcriber
    from services.labeling import label

    data = synth_corpus[0] / "dev"
    decode = BeamConfig(beam=3, nbest=2)
    summary = label(None, data, tmp_path / "labels", decode, batch_size=4, via_serve="teacher",
                    show_progress=False)
    rows = {r["utt_id"]: r for r in iter_rows(tmp_path / "labels")}
    source = {r["utt_id"]: r for r in iter_rows(data)}
    assert rows.keys() == source.keys() and summary.utterances == 6
    transcriber = Transcriber(tiny_bundle[0], device="cpu")
    for utt, row in rows.items():
        want = transcriber.transcribe([source[utt]["audio"]], decode)[0]
        assert [h["tokens"] for h in row["hyps"]] == [n.tokens for n in want.nbest]
        assert row["teacher_id"] == transcriber.bundle.bundle_id


def test_the_handle_decodes_bytes_and_refuses_paths(service, speech_dir):
    """Python callers get the HTTP rules: audio bytes only, never a path read on the replica."""
    from ray import serve

    handle = serve.get_app_handle("teacher")
    audio = (speech_dir / "utt0.wav").read_bytes()
    assert handle.decode.remote(audio, {"beam": 2}).result()["text"] is not None
    for path in (str(speech_dir / "utt0.wav"), speech_dir / "utt0.wav"):
        with pytest.raises(Exception, match="takes the audio's bytes"):
            handle.decode.remote(path).result()
    assert handle.decode.remote(audio).result()["nbest"]   # the replica still serves


BUSY_LIMITS = {"max_batch_size": 2, "max_queued_requests": 2, "retry_after_s": 1.0}   # holds 4


@pytest.fixture(scope="module")
def busy(service, tiny_bundle):
    """A second app with a small bound, at /busy: batches of 2, 2 more queued, then 503. A lone
    request waits a second for a partner, so a client can leave while it waits."""
    from ray import serve

    from services.teacher import Teacher, deployment_options

    handle = serve.run(Teacher.options(**deployment_options(**BUSY_LIMITS), ray_actor_options={"num_cpus": 0})
                       .bind(bundle=str(tiny_bundle[0]), batch_wait_ms=1000, **BUSY_LIMITS),
                       name="busy", route_prefix="/busy")
    yield handle
    serve.delete("busy")


def timed_post(base_url: str, body: bytes, timeout: float = 60, beam: int = 2) -> tuple[httpx.Response, float]:
    began = time.perf_counter()
    answer = httpx.post(f"{base_url}/busy/v1/transcribe", content=body, params={"beam": beam},
                        headers={"Content-Type": "audio/wav"}, timeout=timeout)
    return answer, time.perf_counter() - began


def test_a_flood_past_the_bound_gets_fast_503s_and_the_admitted_are_answered(service, busy, speech):
    """20 clients at once on a replica that holds 4: the admitted get their transcript, the others
    a 503 sooner than any answer, with Retry-After and a one-line JSON detail; a request right
    after is answered, and the replica holds nothing. (On an idle machine a refusal takes tens of
    milliseconds; beside other work on 2 cores, Ray's path to a decoding replica alone takes about
    a second, so the test compares refusals with answers rather than with a clock.)"""
    base = str(service.base_url).rstrip("/")
    long = encode(np.concatenate([load_audio(speech[f"utt{i}.wav"]).numpy() for i in range(4)] * 2),
                  16000, "WAV", "PCM_16")   # 10 s of speech: answers take a while to decode
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: timed_post(base, long, beam=4), range(20)))
    answered = [(a, s) for a, s in results if a.status_code == 200]
    refused = [(a, s) for a, s in results if a.status_code == 503]
    assert len(answered) + len(refused) == 20, [a.status_code for a, _ in results]
    assert len(answered) >= 4 and len(refused) >= 4, (len(answered), len(refused))
    for answer, _ in refused:
        assert answer.headers["retry-after"] == "1" and answer.headers["content-type"] == "application/json"
        detail = answer.json()["detail"]
        assert "\n" not in detail and "busy" in detail and "retry after 1 s" in detail, detail
    refusal_s, answer_s = sorted(s for _, s in refused), sorted(s for _, s in answered)
    assert refusal_s[len(refusal_s) // 2] < answer_s[len(answer_s) // 2] and refusal_s[-1] < answer_s[-1], \
        (refusal_s, answer_s)
    after, _ = timed_post(base, speech["utt0.wav"])
    assert after.status_code == 200 and after.json()["text"] == SENTENCES[0]
    stats = busy.stats.remote().result()
    assert stats["held"] == 0 and stats["limit"] == 4 and stats["refused"] >= len(refused)


def test_a_client_that_leaves_costs_no_decoding(service, busy, speech):
    """Ray Serve cancels the request of a client that disconnects; the replica gives its place
    back and its audio is dropped from the batch it was waiting for (never decoded)."""
    base = str(service.base_url).rstrip("/")
    before = busy.stats.remote().result()
    with pytest.raises(httpx.TimeoutException):   # it waits (alone in its batch) longer than its client
        timed_post(base, speech["utt1.wav"], timeout=0.3)
    time.sleep(1.5)   # past the batch's wait: had it been kept, it would be decoded by now
    left = busy.stats.remote().result()
    assert left["decoded"] == before["decoded"] and left["held"] == 0
    assert left["cancelled"] == before["cancelled"] + 1
    answer, _ = timed_post(base, speech["utt1.wav"])
    assert answer.status_code == 200 and answer.json()["text"] == SENTENCES[1]
    assert busy.stats.remote().result()["decoded"] == before["decoded"] + 1


def test_labeling_via_serve_waits_out_a_busy_deployment(busy, synth_corpus, tiny_bundle, tmp_path):
    """6 utterances sent at once to a replica that holds 4: the refused are sent again after the
    Retry-After, and every utterance gets the local teacher's N-best (none left empty)."""
    from common.beam_search import BeamConfig
    from common.corpora.manifest import iter_rows
    from common.transcriber import Transcriber
    from services.labeling import label

    data, decode = synth_corpus[0] / "dev", BeamConfig(beam=2, nbest=2)
    refused = busy.stats.remote().result()["refused"]
    summary = label(None, data, tmp_path / "labels", decode, batch_size=6, via_serve="busy",
                    show_progress=False)
    assert summary.utterances == 6 and summary.unusable == 0
    assert busy.stats.remote().result()["refused"] > refused   # it was busy, and that was waited out
    transcriber = Transcriber(tiny_bundle[0], device="cpu")
    for row in iter_rows(tmp_path / "labels"):
        want = transcriber.transcribe([row["audio"]], decode)[0]
        assert [h["tokens"] for h in row["hyps"]] == [n.tokens for n in want.nbest]


def test_serve_refuses_a_bound_that_cannot_work(tiny_bundle, capsys):
    from seqkd.cli import build_parser

    for flag, value, words in (("--max-queued-requests", "-1", "max_queued_requests must be an integer >= 0"),
                               ("--max-batch-size", "0", "max_batch_size must be an integer >= 1"),
                               ("--retry-after-s", "inf", "retry_after_s must be a finite number")):
        args = build_parser().parse_args(["serve", str(tiny_bundle[0]), flag, value])
        assert args.run(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err, err
