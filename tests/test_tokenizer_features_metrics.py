"""Tokenizer ids, the feature front end and error rates."""

from __future__ import annotations

import pytest
import torch

from common.audio import load_audio
from common.features import CMVN, FeatureConfig, FeatureExtractor, SpecAugment, SpecAugmentConfig
from common.metrics import bootstrap_wer, error_rates, utterance_errors, utterance_wer
from common.tokenizer import BLANK_ID, EOS_ID, UNK_ID, Tokenizer, TokenizerError

TEXTS = ["the company said its profit rose", "shares fell in heavy trading",
         "the dollar was mixed against major currencies", "analysts expect rates to rise"] * 10


@pytest.mark.parametrize("kind", ["char", "bpe", "unigram"])
def test_tokenizer_round_trip_and_special_ids(kind):
    tok = Tokenizer.train(TEXTS, vocab_size=40, model_type=kind)
    assert tok.pieces([BLANK_ID, UNK_ID, EOS_ID]) == ["<blank>", "<unk>", "</s>"]
    for text in TEXTS[:4]:
        ids = tok.encode(text)
        assert min(ids) > EOS_ID
        assert tok.decode(ids) == text
    assert tok.decode([BLANK_ID, EOS_ID] + tok.encode("the")) == "the"
    assert Tokenizer(tok.proto).encode("shares") == tok.encode("shares")


def test_tokenizer_errors():
    with pytest.raises(TokenizerError, match="no text"):
        Tokenizer.train(["", "  "])
    with pytest.raises(TokenizerError, match="invalid sentencepiece model"):
        Tokenizer(b"not a model")


def test_features_shape_and_cmvn(speech_dir):
    wave = load_audio(speech_dir / "utt0.wav")
    fe = FeatureExtractor(FeatureConfig())
    raw = fe.raw(wave)
    assert raw.shape == (1 + (wave.numel() - 400) // 160, 80)
    cmvn = CMVN.from_features([raw])
    normed = FeatureExtractor(FeatureConfig(), cmvn)(wave)
    assert torch.allclose(normed.mean(0), torch.zeros(80), atol=1e-3)
    assert torch.allclose(normed.std(0, unbiased=False), torch.ones(80), atol=1e-2)
    feats, lens = fe.batch([wave, wave[:8000]])
    assert feats.shape[0] == 2 and lens.tolist() == [raw.shape[0], 1 + (8000 - 400) // 160]
    assert feats[1, 48:].abs().sum() == 0


def test_specaugment_masks_only_in_training():
    torch.manual_seed(0)
    aug = SpecAugment(SpecAugmentConfig(freq_masks=2, freq_width=10, time_masks=2, time_width=10))
    feats = torch.randn(2, 100, 80) + 5
    lens = torch.tensor([100, 60])
    aug.eval()
    assert torch.equal(aug(feats, lens), feats)
    aug.train()
    out = aug(feats, lens)
    assert (out == 0).any() and not torch.equal(out, feats)
    assert out[1, 60:].abs().sum() == 0


def test_error_rates_counts():
    r = error_rates(["a b c d", "e f"], ["a x c", "e f g"])
    assert (r.substitutions, r.deletions, r.insertions, r.words) == (1, 1, 1, 6)
    assert r.wer == pytest.approx(3 / 6)
    assert 0 < r.cer < 1
    assert utterance_wer("a b", "a b") == 0.0 and utterance_wer("a b", "") == 1.0
    with pytest.raises(ValueError):
        error_rates([""], ["x"])


def test_paired_bootstrap_recomputes_the_corpus_wer_difference():
    import random

    rng = random.Random(0)
    words = "stocks rose the bank cut rates oil prices fell markets were calm".split()
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(300)]

    def noisy(p: float) -> list[str]:
        return [" ".join(w if rng.random() > p else rng.choice(words) for w in r.split()) for r in refs]

    good, bad = noisy(0.05), noisy(0.3)
    e_good, n = utterance_errors(refs, good)
    e_bad, n_bad = utterance_errors(refs, bad)
    assert n == n_bad and sum(n) == error_rates(refs, good).words
    assert sum(e_good) / sum(n) == pytest.approx(error_rates(refs, good).wer)   # = the corpus WER
    single = bootstrap_wer(e_good, n)
    assert single.value == pytest.approx(error_rates(refs, good).wer)
    assert single.ci95[0] < single.value < single.ci95[1]
    diff = bootstrap_wer(e_good, n, e_bad)
    assert diff.value == pytest.approx(error_rates(refs, good).wer - error_rates(refs, bad).wer)
    assert diff.ci95[1] < 0 and diff.p_value == pytest.approx(1 / diff.resamples)
    same = bootstrap_wer(e_good, n, e_good)
    assert same.value == 0 and same.ci95 == (0.0, 0.0) and same.p_value == 1.0
    with pytest.raises(ValueError, match="same utterances"):
        bootstrap_wer(e_good, n, e_bad[:-1])
