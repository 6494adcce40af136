"""Bundles round-trip exactly and fail cleanly when damaged."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from common.beam_search import BeamConfig, beam_search
from common.bundle import BundleError, load_bundle, save_bundle
from common.features import FeatureConfig, FeatureExtractor
from common.tokenizer import Tokenizer
from tests.conftest import FAMILIES, tiny_model


@pytest.fixture(params=sorted(FAMILIES))
def saved(request, tmp_path):
    tok = Tokenizer.train(["abc def ghi jkl mno pqr stu vwx yz"] * 3, vocab_size=40, model_type="char")
    model = tiny_model(request.param, input_dim=80, vocab=tok.vocab_size)
    path = tmp_path / "bundle"
    bundle_id = save_bundle(path, model, tok, FeatureExtractor(FeatureConfig()), {"note": "test"})
    return path, model, bundle_id


def test_round_trip_gives_identical_outputs(saved):
    path, model, bundle_id = saved
    bundle = load_bundle(path)
    assert bundle.bundle_id == bundle_id and bundle.meta["bundle_id"] == bundle_id
    assert bundle.meta["params"] == model.num_params() and bundle.meta["note"] == "test"
    torch.manual_seed(0)
    feats, lens = torch.randn(2, 90, 80), torch.tensor([90, 50])
    cfg = BeamConfig(beam=3, nbest=3, ctc_weight=0.3, max_len_ratio=0.5)
    with torch.no_grad():
        a = beam_search(model, *model.encode(feats, lens), cfg)
        b = beam_search(bundle.model, *bundle.model.encode(feats, lens), cfg)
    assert [[h.tokens for h in x] for x in a] == [[h.tokens for h in x] for x in b]
    assert [[h.logp for h in x] for x in a] == [[h.logp for h in x] for x in b]


def test_bundle_id_changes_with_weights(saved, tmp_path):
    path, model, bundle_id = saved
    bundle = load_bundle(path)
    with torch.no_grad():
        next(bundle.model.parameters()).add_(1.0)
    other = save_bundle(tmp_path / "other", bundle.model, bundle.tokenizer, bundle.features)
    assert other != bundle_id


def _truncate(path):
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])


def _mismatch(path):
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    enc = cfg["model"]["encoder"]
    enc["d_model" if "d_model" in enc else "hidden"] *= 2
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))


def _unknown_key(path):
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    cfg["model"]["decoder"]["colour"] = "blue"
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))


def _pickle_instead(path):
    (path / "model.safetensors").write_bytes(b"\x80\x04\x95" + b"\0" * 64)  # a pickle header


def _bad_tokenizer(path):
    (path / "tokenizer.model").write_bytes(b"garbage")


def _vocab_mismatch(path):
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    cfg["vocab_size"] += 1
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.mark.parametrize("damage,fragment", [
    (lambda p: (p / "meta.json").unlink(), "missing meta.json"),
    (lambda p: (p / "tokenizer.model").unlink(), "missing tokenizer.model"),
    (_truncate, "unreadable weights"),
    (_pickle_instead, "unreadable weights"),
    (_mismatch, "weights do not match config.yaml"),
    (_unknown_key, "colour: unknown key"),
    (_bad_tokenizer, "invalid sentencepiece model"),
    (_vocab_mismatch, "tokenizer has"),
    (lambda p: (p / "cmvn.safetensors").write_bytes(b"xx"), "CMVN"),
    (lambda p: (p / "meta.json").write_text("{"), "corrupt model bundle"),
])
def test_damaged_bundle_is_a_clear_error(saved, damage, fragment):
    path = saved[0]
    damage(path)
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nothing")


def test_meta_is_json(saved):
    meta = json.loads((saved[0] / "meta.json").read_text())
    assert set(meta) >= {"params", "bundle_id", "vocab_size"}
