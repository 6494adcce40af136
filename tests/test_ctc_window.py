"""The windowed CTC prefix scorer (ESPnet's margin): the plain frame-by-frame rule's scores, the
exact scorer's when the window holds every frame, and the same N-best batched or alone."""

from __future__ import annotations

import math

import pytest
import torch

from common.beam_search import BeamConfig, beam_search
from common.beam_search_reference import ctc_prefix_scores
from common.ctc_window import WindowedCTCPrefixScorer
from common.tokenizer import EOS_ID
from tests.conftest import FAMILIES, tiny_model

LENGTHS = [160, 23, 96, 41, 130]


def _peaky_log_probs(rows: int, frames: int, vocab: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    logits = torch.randn(rows, frames, vocab) * 3.0
    logits[..., 0] += 2.0                        # trained CTC heads mostly say blank
    logits[..., EOS_ID] = -1e4                   # </s> is never a CTC label
    return torch.log_softmax(logits, dim=-1)


@pytest.mark.parametrize("margin", [1, 3, 8])
def test_windowed_scores_equal_the_plain_windowed_recursion(margin):
    """Every row a different prefix of a different utterance length (padded), every step: each
    candidate's prefix score and </s>'s score as the frame-by-frame rule gives them."""
    rows, frames, vocab = 4, 30, 8
    logp = _peaky_log_probs(rows, frames, vocab, seed=margin)
    lens = torch.tensor([30, 17, 24, 9])
    gen = torch.Generator().manual_seed(margin)
    tokens = [3, 4, 5, 6, 7, 1]
    prefixes = [[tokens[int(i)] for i in torch.randint(0, len(tokens), (7,), generator=gen)]
                for _ in range(rows)]
    prefixes[1][2] = prefixes[1][1]                  # a repeated token needs a blank between
    scorer = WindowedCTCPrefixScorer(logp, lens, margin)
    state = scorer.initial_state()
    cand = torch.tensor([[EOS_ID] + tokens] * rows)  # (N, C)
    for step in range(7):
        delta, ext = scorer.score(state, cand)
        for n in range(rows):
            utt = logp[n, :int(lens[n])].tolist()
            done = prefixes[n][:step]
            psi, complete = ctc_prefix_scores(utt, done, margin)
            _, want_end = psi, complete
            got_end = float(ext.psi[n, 0])
            assert _same(got_end, want_end), (step, n, "</s>")
            for col, tok in enumerate(tokens, start=1):
                want, _ = ctc_prefix_scores(utt, done + [tok], margin)
                assert _same(float(ext.psi[n, col]), want), (step, n, tok)
        chosen = torch.tensor([prefixes[n][step] for n in range(rows)])
        cols = torch.tensor([tokens.index(int(t)) + 1 for t in chosen])
        state = scorer.select(ext, torch.arange(rows), cols, chosen, step + 1)


def _same(got: float, want: float) -> bool:
    if math.isinf(want) or want < -1e4:   # impossible: -inf, or below the closed form's floor
        return got < -1e4
    return math.isclose(got, want, abs_tol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_window_holding_every_frame_is_exact(family):
    model = tiny_model(family)
    with torch.no_grad():
        model.ctc.bias[0] += 2.0
    enc, enc_lens = _encode(model)
    cfg = BeamConfig(beam=4, nbest=4, ctc_weight=0.5, max_len_ratio=0.5)
    exact = beam_search(model, enc, enc_lens, cfg)
    wide = beam_search(model, enc, enc_lens, BeamConfig(**{**cfg.__dict__, "ctc_window": max(LENGTHS)}))
    for got, want in zip(wide, exact):
        assert [h.tokens for h in got] == [h.tokens for h in want]
        assert all(math.isclose(g.score, w.score, abs_tol=1e-4) for g, w in zip(got, want))


def test_windowed_search_batched_equals_alone_and_the_window_matters():
    """Windows are per row: a padded batch gives each utterance its N-best alone. A narrow window
    changes some scores (it is not the exact search under another name)."""
    model = tiny_model("pblstm-lstm")
    with torch.no_grad():
        model.ctc.bias[0] += 2.0
    enc, enc_lens = _encode(model)
    cfg = BeamConfig(beam=4, nbest=4, ctc_weight=0.5, max_len_ratio=0.5, ctc_window=2)
    batched = beam_search(model, enc, enc_lens, cfg)
    for i, got in enumerate(batched):
        n = int(enc_lens[i])
        want = beam_search(model, enc[i:i + 1, :n], enc_lens[i:i + 1], cfg)[0]
        assert [h.tokens for h in got] == [h.tokens for h in want], i
        assert all(math.isclose(g.score, w.score, abs_tol=1e-4) for g, w in zip(got, want)), i
    exact = beam_search(model, enc, enc_lens, BeamConfig(**{**cfg.__dict__, "ctc_window": 0}))
    assert any(not math.isclose(g.score, w.score, abs_tol=1e-4)
               for got, want in zip(batched, exact) for g, w in zip(got, want))


def test_a_negative_window_is_refused():
    model = tiny_model("pblstm-lstm")
    enc, enc_lens = _encode(model)
    with pytest.raises(ValueError, match="ctc_window must be >= 0"):
        beam_search(model, enc, enc_lens, BeamConfig(ctc_weight=0.3, ctc_window=-1))


def _encode(model, seed: int = 1):
    torch.manual_seed(seed)
    feats = torch.randn(len(LENGTHS), max(LENGTHS), model.input_dim)
    with torch.no_grad():
        return model.encode(feats, torch.tensor(LENGTHS))


def test_labels_made_before_the_window_existed_resume_without_one():
    from common.labels import label_settings, same_settings

    older = {k: v for k, v in label_settings(BeamConfig(ctc_weight=0.3)).items() if k != "ctc_window"}
    assert same_settings(older, label_settings(BeamConfig(ctc_weight=0.3)))
    assert not same_settings(older, label_settings(BeamConfig(ctc_weight=0.3, ctc_window=8)))


def test_a_window_without_ctc_scores_is_refused():
    with pytest.raises(ValueError, match="needs ctc_weight > 0"):
        BeamConfig(ctc_window=4).validate()
