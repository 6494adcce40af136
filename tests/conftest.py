"""Shared fixtures: tiny random-weight models of each family, and real espeak-ng speech."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.audio import load_audio
from common.bundle import save_bundle
from common.features import CMVN, FeatureConfig, FeatureExtractor, pad_features
from common.kd import model_loss
from common.models import ModelConfig, Seq2Seq
from common.tokenizer import Tokenizer

FAMILIES = {
    "pblstm-lstm": {
        "encoder": {"type": "pblstm", "hidden": 32, "layers": 2, "subsample": [2, 2], "proj": 32},
        "decoder": {"type": "lstm", "embed": 16, "hidden": 32, "att_dim": 32,
                    "att_conv_channels": 4, "att_conv_kernel": 5},
    },
    "stacked-pblstm-lstm": {   # low frame rate input: 2 frames stacked before the first layer
        "encoder": {"type": "pblstm", "hidden": 32, "layers": 2, "subsample": [1, 2], "proj": 32,
                    "stack": 2},
        "decoder": {"type": "lstm", "embed": 16, "hidden": 32, "att_dim": 32,
                    "att_conv_channels": 4, "att_conv_kernel": 5},
    },
    "conformer-transformer": {
        "encoder": {"type": "conformer", "d_model": 32, "layers": 2, "heads": 2, "ffn": 64,
                    "kernel": 7, "subsample_channels": 8},
        "decoder": {"type": "transformer", "d_model": 32, "layers": 2, "heads": 2, "ffn": 64},
    },
}


def tiny_model(family: str, input_dim: int = 40, vocab: int = 24, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(ModelConfig.from_dict(FAMILIES[family]), input_dim, vocab).eval()


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory) -> Path:
    """Four short real utterances spoken by espeak-ng (the overfit and CLI tests share them)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed; `make test` installs it")
    from tests.audio_files import espeak

    root = tmp_path_factory.mktemp("speech")
    for i, text in enumerate(SENTENCES):
        espeak(text, root / f"utt{i}.wav", speed=170)
    return root


SENTENCES = ["stocks rose today", "the bank cut rates", "oil prices fell", "markets were calm"]


RECIPE = {
    "encoder": {"type": "pblstm", "hidden": 64, "layers": 2, "subsample": [2, 2], "proj": 64},
    "decoder": {"type": "lstm", "embed": 32, "hidden": 64, "att_dim": 64,
                "att_conv_channels": 4, "att_conv_kernel": 7},
    "ctc_weight": 0.3, "label_smoothing": 0.0,
}


def train_tiny(speech_dir, steps: int = 400) -> tuple[Seq2Seq, Tokenizer, FeatureExtractor, list[float]]:
    torch.manual_seed(0)
    waves = [load_audio(speech_dir / f"utt{i}.wav") for i in range(len(SENTENCES))]
    tokenizer = Tokenizer.train(SENTENCES, vocab_size=30, model_type="char")
    raw = FeatureExtractor(FeatureConfig())
    features = FeatureExtractor(FeatureConfig(), CMVN.from_features([raw.raw(w) for w in waves]))
    feats, lens = pad_features([features(w) for w in waves])
    targets = [tokenizer.encode(s) for s in SENTENCES]
    model = Seq2Seq(ModelConfig.from_dict(RECIPE), 80, tokenizer.vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model_loss(model, feats, lens, targets).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(loss.item())
    return model.eval(), tokenizer, features, losses


@pytest.fixture(scope="session")
def tiny_bundle(speech_dir, tmp_path_factory):
    model, tokenizer, features, losses = train_tiny(speech_dir)
    path = tmp_path_factory.mktemp("bundle") / "tiny"
    # meta as a trained bundle's: training facts and the server paths it was trained from
    save_bundle(path, model, tokenizer, features, {"recipe": "tiny", "steps": len(losses),
                                                   "train_data": str(speech_dir), "dev_data": str(speech_dir)})
    return path, losses


def seqkd(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The command line as a real subprocess."""
    return subprocess.run([sys.executable, "-m", "seqkd.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


SYNTH_ARGS = ("--train", "24", "--dev", "6", "--test", "6", "--test-unseen-engine", "4", "--seed", "7",
              "--shard-size", "10")


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> tuple[Path, str]:
    """A small built-in corpus (24/6/6/4 utterances, shards of 10), shared by every test."""
    out = tmp_path_factory.mktemp("synth") / "D"
    done = seqkd("prepare", "synth", "--out", str(out), *SYNTH_ARGS, "--stats")
    assert done.returncode == 0, done.stderr
    return out, done.stdout


@pytest.fixture(scope="session")
def ray_local():
    """One in-process Ray for every Ray test: 2 CPUs, no dashboard, a modest object store."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=400 * 1024 * 1024, log_to_driver=False)
    yield ray
    ray.shutdown()
