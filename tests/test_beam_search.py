"""The batched beam search must equal the plain one-utterance-at-a-time search, token for token."""

from __future__ import annotations

import math

import pytest
import torch

from common.beam_search import BeamConfig, beam_search
from common.beam_search_reference import ctc_prefix_scores, reference_beam_search
from common.ctc_prefix import CTCPrefixScorer
from common.tokenizer import EOS_ID
from tests.conftest import FAMILIES, tiny_model

LENGTHS = [160, 23, 96, 41, 130]  # very different lengths in one batch


def _encode(model, seed=1):
    torch.manual_seed(seed)
    feats = torch.randn(len(LENGTHS), max(LENGTHS), model.input_dim)
    lens = torch.tensor(LENGTHS)
    with torch.no_grad():
        return model.encode(feats, lens)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("beam", [1, 4, 10])
@pytest.mark.parametrize("ctc_weight,eos_bias,penalty", [(0.0, 0.0, 1.0), (0.0, 1.2, 0.0),
                                                         (0.3, 0.0, 1.0), (0.5, 1.2, 1.0)])
def test_batched_equals_reference(family, beam, ctc_weight, eos_bias, penalty):
    model = tiny_model(family)
    with torch.no_grad():
        model.decoder.output.bias[EOS_ID] += eos_bias  # eos_bias > 0: hypotheses end on their own
        model.ctc.bias[0] += 2.0                        # a CTC head that prefers blank, as trained ones do
    enc, enc_lens = _encode(model)
    cfg = BeamConfig(beam=beam, nbest=beam, ctc_weight=ctc_weight, length_penalty=penalty,
                     max_len_ratio=0.5)
    batched = beam_search(model, enc, enc_lens, cfg)
    assert len(batched) == len(LENGTHS)
    for i, got in enumerate(batched):
        want = reference_beam_search(model, enc[i:i + 1], int(enc_lens[i]), cfg)
        assert [h.tokens for h in got] == [h.tokens for h in want], f"utterance {i}"
        for g, w in zip(got, want):
            assert math.isclose(g.logp, w.logp, abs_tol=1e-4)
            assert math.isclose(g.score, w.score, abs_tol=1e-4)
        scores = [h.score for h in got]
        assert scores == sorted(scores, reverse=True)


def test_nbest_and_max_length():
    model = tiny_model("pblstm-lstm")
    enc, enc_lens = _encode(model)
    out = beam_search(model, enc, enc_lens, BeamConfig(beam=6, nbest=3, max_len_ratio=0.25))
    for hyps, n in zip(out, enc_lens):
        limit = max(1, int(0.25 * int(n)))
        assert len(hyps) == (3 if limit > 1 else 1)  # a limit of 1 leaves only the empty output
        assert all(len(h.tokens) < limit for h in hyps)
        assert all(EOS_ID not in h.tokens and 0 not in h.tokens for h in hyps)


def test_batch_order_does_not_matter():
    model = tiny_model("conformer-transformer")
    enc, enc_lens = _encode(model)
    cfg = BeamConfig(beam=4, nbest=2, ctc_weight=0.3, max_len_ratio=0.5)
    forward = beam_search(model, enc, enc_lens, cfg)
    perm = torch.tensor([3, 0, 4, 2, 1])
    backward = beam_search(model, enc[perm], enc_lens[perm], cfg)
    for j, i in enumerate(perm.tolist()):
        assert [h.tokens for h in backward[j]] == [h.tokens for h in forward[i]]


def test_ctc_prefix_probabilities_are_consistent():
    """P(g...) = P(g exactly) + sum_c P(g c ...): the prefix scorer conserves probability."""
    torch.manual_seed(3)
    logits = torch.randn(1, 12, 7)
    logits[..., EOS_ID] = -1e4  # </s> is never a CTC label; its column scores "ends here" instead
    logp = torch.log_softmax(logits, dim=-1)
    scorer = CTCPrefixScorer(logp, torch.tensor([12]))
    state = scorer.initial_state()
    cand = torch.arange(1, 7).unsqueeze(0)  # every non-blank token; id 2 is </s>
    for prefix in ([], [3], [3, 3], [4, 5]):
        st = state
        for length, tok in enumerate(prefix, start=1):
            _, r_new, psi = scorer.score(st, cand)
            col = torch.tensor([tok - 1])
            st = CTCPrefixScorer.select(r_new, psi, torch.tensor([0]), col, torch.tensor([tok]), length)
        _, _, psi = scorer.score(st, cand)
        rows = logp[0].tolist()
        ext = [c for c in range(1, 7) if c != EOS_ID]
        total = torch.logsumexp(torch.tensor([psi[0, EOS_ID - 1].item()]
                                             + [psi[0, c - 1].item() for c in ext]), 0)
        assert math.isclose(float(total), ctc_prefix_scores(rows, prefix)[0], abs_tol=1e-4)
        for c in ext:
            assert math.isclose(psi[0, c - 1].item(), ctc_prefix_scores(rows, prefix + [c])[0],
                                abs_tol=1e-4)


def test_invalid_beam_settings():
    model = tiny_model("pblstm-lstm")
    enc, enc_lens = _encode(model)
    for bad in [BeamConfig(beam=0), BeamConfig(beam=2, nbest=3), BeamConfig(ctc_weight=1.5)]:
        with pytest.raises(ValueError):
            beam_search(model, enc, enc_lens, bad)
