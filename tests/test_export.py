"""`seqkd export`: ONNX graphs decoded by the same beam search give the PyTorch bundle's N-best on
real speech, for both model families; int8 decodes; damaged or foreign exports fail in one line."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from common.beam_search import BeamConfig
from common.bundle import BundleError, bundle_id, load_bundle, load_model, save_bundle
from common.export import export_bundle
from common.features import FeatureConfig, FeatureExtractor
from common.onnx_model import OnnxSeq2Seq
from common.tokenizer import Tokenizer
from common.transcriber import Transcriber
from tests.conftest import SENTENCES, seqkd, tiny_model

CFG = BeamConfig(beam=4, nbest=3, ctc_weight=0.3, topm=3)
SEED, SCALE = 0, 8.0


@pytest.fixture(scope="module")
def conformer_bundle(tiny_bundle, tmp_path_factory):
    """A random-weight Conformer + Transformer with the tiny bundle's tokenizer and features, its
    output layers scaled up so that its hypotheses' scores lie apart as a trained model's do (in a
    near-tie, float rounding rather than the backend would pick the winner). Training one on the
    four utterances would cost minutes on two cores."""
    source = load_bundle(tiny_bundle[0])
    model = tiny_model("conformer-transformer", input_dim=80, vocab=source.tokenizer.vocab_size, seed=SEED)
    with torch.no_grad():
        for layer in (model.ctc, model.decoder.output):
            layer.weight.mul_(SCALE)
    path = tmp_path_factory.mktemp("conformer") / "bundle"
    save_bundle(path, model, source.tokenizer, source.features, {"note": "random weights"})
    return path


@pytest.fixture(scope="module")
def bundles(tiny_bundle, conformer_bundle):
    return {"pblstm-lstm": tiny_bundle[0], "conformer-transformer": conformer_bundle}


@pytest.fixture(scope="module")
def exported(bundles, tmp_path_factory):
    """fp32 and int8 exports of both families: {(family, precision): directory}."""
    root = tmp_path_factory.mktemp("exports")
    return {(family, precision): _export(path, root / f"{family}-{precision}", precision)
            for family, path in bundles.items() for precision in ("fp32", "int8")}


def _export(source, out, precision):
    export_bundle(source, out, precision)
    return out


def _wavs(speech_dir) -> list[str]:
    return [str(speech_dir / f"utt{i}.wav") for i in range(len(SENTENCES))]


@pytest.mark.parametrize("family", ["pblstm-lstm", "conformer-transformer"])
def test_onnx_fp32_nbest_equals_pytorch_on_real_speech(family, bundles, exported, speech_dir):
    want = Transcriber(bundles[family], device="cpu").transcribe(_wavs(speech_dir), CFG)
    onnx = Transcriber(exported[family, "fp32"], device="cpu")
    assert isinstance(onnx.bundle.model, OnnxSeq2Seq)
    got = onnx.transcribe(_wavs(speech_dir), CFG)
    if family == "pblstm-lstm":
        assert [t.text for t in want] == SENTENCES            # the trained model knows the phrases
    for a, b in zip(got, want):
        assert [n.tokens for n in a.nbest] == [n.tokens for n in b.nbest] and len(a.nbest) == 3
        assert [n.logp for n in a.nbest] == pytest.approx([n.logp for n in b.nbest], abs=1e-3)
        assert [n.text for n in a.nbest] == [n.text for n in b.nbest]
        for x, y in zip(a.nbest, b.nbest):           # the decoder's top-M along each hypothesis
            assert x.topm_ids == y.topm_ids
            assert torch.allclose(torch.tensor(x.topm_logp), torch.tensor(y.topm_logp), atol=1e-3)
        assert a.ctc_topm[0] == b.ctc_topm[0]        # and the CTC head's per frame
        assert torch.allclose(torch.tensor(a.ctc_topm[1]), torch.tensor(b.ctc_topm[1]), atol=1e-3)


def test_stacked_frames_export_with_dynamic_axes(tmp_path):
    """The low-frame-rate front end (frames stacked before the pBLSTM): the export's own check ran
    the graphs at other batch, frame, row and prefix sizes than traced; here, once more, at others."""
    tok = Tokenizer.train(["abc def ghi jkl mno pqr stu vwx yz"] * 3, vocab_size=40, model_type="char")
    save_bundle(tmp_path / "b", tiny_model("stacked-pblstm-lstm", input_dim=80, vocab=tok.vocab_size), tok,
                FeatureExtractor(FeatureConfig()))
    meta = export_bundle(tmp_path / "b", tmp_path / "e")
    assert meta["source_bundle_id"] == bundle_id(tmp_path / "b") and meta["bundle_id"] == bundle_id(tmp_path / "e")
    feats, lens = torch.randn(3, 230, 80), torch.tensor([230, 101, 64])
    source, onnx = load_bundle(tmp_path / "b").model, load_model(tmp_path / "e").model
    with torch.no_grad():
        enc, enc_lens = source.encode(feats, lens)
        packed, onnx_lens = onnx.encode(feats, lens)
        assert torch.equal(onnx_lens, enc_lens)
        assert torch.allclose(onnx.ctc_log_probs(packed), source.ctc_log_probs(enc), atol=1e-4)


def _weights(path) -> tuple[Counter, list[str]]:
    """Elements of a graph's initializers by data type, and the float matrices that still feed a
    MatMul or Gemm (dynamic quantization must have turned every one into MatMulInteger)."""
    graph = onnx.load(str(path)).graph
    counts: Counter = Counter()
    floats = {w.name for w in graph.initializer if w.data_type == onnx.TensorProto.FLOAT and len(w.dims) == 2}
    for w in graph.initializer:
        counts[onnx.TensorProto.DataType.Name(w.data_type)] += int(np.prod(w.dims))
    unquantized = [i for n in graph.node if n.op_type in ("MatMul", "Gemm") for i in n.input if i in floats]
    return counts, unquantized


@pytest.mark.parametrize("family", ["pblstm-lstm", "conformer-transformer"])
def test_int8_export_holds_int8_weights_and_decodes(family, exported, speech_dir):
    fp32, int8 = (json.loads((exported[family, p] / "meta.json").read_text()) for p in ("fp32", "int8"))
    assert int8["precision"] == "int8" and int8["source_bundle_id"] == fp32["source_bundle_id"]
    for graph in ("encoder.onnx", "decoder.onnx"):
        kinds, unquantized = _weights(exported[family, "int8"] / graph)
        assert not unquantized, (graph, unquantized)
        assert kinds["INT8"] >= 0.6 * sum(kinds.values()), (graph, kinds)   # biases, norms, convs stay fp32
        assert int8["sizes"][graph] < 0.7 * fp32["sizes"][graph]   # tiny models: the graph itself weighs
    got = Transcriber(exported[family, "int8"], device="cpu").transcribe(_wavs(speech_dir), CFG)
    assert all(len(t.nbest) == 3 and all(n.logp < 0 for n in t.nbest) for t in got)
    if family == "pblstm-lstm":
        assert sum(t.text == s for t, s in zip(got, SENTENCES)) >= 3, [t.text for t in got]


def _other_version(path):
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = 99
    (path / "meta.json").write_text(json.dumps(meta))


def _not_ours(path):
    meta = json.loads((path / "meta.json").read_text())
    del meta["format"]
    (path / "meta.json").write_text(json.dumps(meta))


def _truncate_graph(path):
    data = (path / "encoder.onnx").read_bytes()
    (path / "encoder.onnx").write_bytes(data[: len(data) // 2])


def _flip_a_byte(path):
    data = bytearray((path / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "decoder.onnx").write_bytes(bytes(data))


def _garbage_graph_rehashed(path):
    """Not an ONNX file, with meta.json updated to match: ONNX Runtime itself must refuse it."""
    from common.bundle import file_sha256

    (path / "encoder.onnx").write_bytes(b"\x08\x07garbage" * 10)
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["encoder.onnx"] = file_sha256(path / "encoder.onnx")
    (path / "meta.json").write_text(json.dumps(meta))


def _other_state_names(path):
    """meta.json names another decoder's state (it is not hashed): the graph does not match it."""
    meta = json.loads((path / "meta.json").read_text())
    meta["graphs"]["state"] = ["prefix"]
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage,fragment", [
    (_other_version, "format version 99; this seqkd reads version 1"),
    (_not_ours, "is not a seqkd export"),
    (lambda p: (p / "decoder.onnx").unlink(), "incomplete exported model"),
    (lambda p: (p / "meta.json").write_text("{"), "corrupt exported model"),
    (_truncate_graph, "damaged exported model"),
    (_flip_a_byte, "decoder.onnx is not the file that was exported"),
    (lambda p: (p / "tokenizer.model").write_bytes(b"xx"), "tokenizer.model is not the file"),
    (_garbage_graph_rehashed, "corrupt exported model"),
    (_other_state_names, "decoder.onnx has inputs"),
])
def test_damaged_or_foreign_export_is_one_clear_line(damage, fragment, exported, tmp_path):
    path = tmp_path / "e"
    shutil.copytree(exported["pblstm-lstm", "fp32"], path)
    load_model(path)                                          # intact before the damage
    damage(path)
    with pytest.raises(BundleError) as info:
        load_model(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_command_line_export_transcribe_evaluate_and_report(tiny_bundle, speech_dir, synth_corpus, tmp_path):
    out = seqkd("export", str(tiny_bundle[0]), "--out", str(tmp_path / "tiny_int8"), "--quantize", "int8")
    assert out.returncode == 0, out.stderr
    assert "int8 ONNX of bundle" in out.stdout and "MB on disk" in out.stdout
    out = seqkd("export", str(tiny_bundle[0]), "--out", str(tmp_path / "tiny_onnx"))
    assert out.returncode == 0, out.stderr

    files = _wavs(speech_dir)
    flags = ["--beam", "4", "--nbest", "2", "--ctc-weight", "0.3", "--json"]
    pytorch = [json.loads(line) for line in seqkd("transcribe", str(tiny_bundle[0]), *files, *flags).stdout.splitlines()]
    done = seqkd("transcribe", str(tmp_path / "tiny_onnx"), *files, *flags)
    assert done.returncode == 0, done.stderr
    onnx = [json.loads(line) for line in done.stdout.splitlines()]
    assert [[n["tokens"] for n in r["nbest"]] for r in onnx] == [[n["tokens"] for n in r["nbest"]] for r in pytorch]

    done = seqkd("evaluate", str(tmp_path / "tiny_onnx"), "--data", str(synth_corpus[0] / "test"), "--beam", "2")
    assert done.returncode == 0, done.stderr
    assert "WER" in done.stdout and "RTF" in done.stdout

    done = seqkd("report", str(tiny_bundle[0]), str(tmp_path / "tiny_onnx"), str(tmp_path / "tiny_int8"),
                 "--test", str(synth_corpus[0] / "test"), "--beam", "2", "--out", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads((tmp_path / "report" / "report.json").read_text())}
    assert {r["form"] for r in rows.values()} == {"pytorch fp32", "onnx fp32", "onnx int8"}
    assert rows["tiny_onnx"]["wer"] == rows["tiny"]["wer"] and rows["tiny"]["role"] == "teacher"
    assert rows["tiny_int8"]["size_mb"] < 0.5 * rows["tiny"]["size_mb"]
    assert all(r["rtf"] > 0 for r in rows.values())
    assert "onnx int8" in (tmp_path / "report" / "report.md").read_text()


def test_a_bundle_and_an_export_are_told_apart(exported, tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match="is an exported .ONNX. model, not a PyTorch bundle"):
        load_bundle(exported["pblstm-lstm", "fp32"])
    with pytest.raises(BundleError, match="is an exported"):
        export_bundle(exported["pblstm-lstm", "fp32"], tmp_path / "again")
    out = seqkd("transcribe", str(exported["pblstm-lstm", "fp32"]), "x.wav", "--device", "cuda:0")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert load_model(tiny_bundle[0]).form == "pytorch fp32"
    assert load_model(exported["pblstm-lstm", "int8"]).form == "onnx int8"
