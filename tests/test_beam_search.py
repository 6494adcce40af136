"""The batched beam search must equal the plain one-utterance-at-a-time search, token for token."""

from __future__ import annotations

import math

import pytest
import torch

from common.beam_search import BeamConfig, beam_search
from common.beam_search_reference import LoopCTCPrefixScorer, ctc_prefix_scores, reference_beam_search
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
            _, ext = scorer.score(st, cand)
            col = torch.tensor([tok - 1])
            st = scorer.select(ext, torch.tensor([0]), col, torch.tensor([tok]), length)
        psi = scorer.score(st, cand)[1].psi
        rows = logp[0].tolist()
        ext = [c for c in range(1, 7) if c != EOS_ID]
        total = torch.logsumexp(torch.tensor([psi[0, EOS_ID - 1].item()]
                                             + [psi[0, c - 1].item() for c in ext]), 0)
        assert math.isclose(float(total), ctc_prefix_scores(rows, prefix)[0], abs_tol=1e-4)
        for c in ext:
            assert math.isclose(psi[0, c - 1].item(), ctc_prefix_scores(rows, prefix + [c])[0],
                                abs_tol=1e-4)


@pytest.mark.parametrize("frames, peaky", [(40, False), (800, True)])
def test_closed_form_forward_variables_equal_the_frame_loop(frames, peaky):
    """Every candidate's score of every row, padded or not, at every step, and the kept rows'
    forward variables: the closed form (float64 cumulative sums) against the frame-by-frame loop.
    800 peaky frames: sums of thousands, where float32 arithmetic would lose the digits."""
    torch.manual_seed(frames)
    rows, vocab, cands = 6, 9, 5
    logits = torch.randn(rows, frames, vocab) * (6.0 if peaky else 1.0)
    logits[..., 0] += 3.0 if peaky else 0.0      # trained CTC heads mostly say blank
    logits[..., EOS_ID] = -1e4
    lens = torch.tensor([frames, frames // 3, frames - 7, 1, frames // 2, 3])
    logp = torch.log_softmax(logits, dim=-1)
    ours, loop = CTCPrefixScorer(logp, lens), LoopCTCPrefixScorer(logp, lens)
    st_ours, st_loop = ours.initial_state(), loop.initial_state()
    gen = torch.Generator().manual_seed(1)
    for step in range(12):
        cand = torch.stack([torch.randperm(vocab - 1, generator=gen)[:cands] + 1 for _ in range(rows)])
        d_ours, ext_ours = ours.score(st_ours, cand)
        d_loop, ext_loop = loop.score(st_loop, cand)
        assert torch.equal(torch.isinf(d_ours), torch.isinf(d_loop)), step
        finite = torch.isfinite(d_loop)
        assert _close(d_ours[finite], d_loop[finite]), step
        kept = torch.randint(0, rows, (rows,), generator=gen)        # rows may be kept twice or not at all
        col = torch.randint(0, cands, (rows,), generator=gen)
        col = torch.where(cand[kept, col] == EOS_ID, (col + 1) % cands, col)
        tok = cand[kept, col]
        st_ours = ours.select(ext_ours, kept, col, tok, step + 1)
        st_loop = loop.select(ext_loop, kept, col, tok, step + 1)
        assert torch.equal(torch.isneginf(st_ours.r), torch.isneginf(st_loop.r)), step
        fin = torch.isfinite(st_loop.r)
        assert _close(st_ours.r[fin], st_loop.r[fin]), step


def _close(ours: torch.Tensor, loop: torch.Tensor) -> bool:
    """Within 1e-4, or a few float32 ulps of values in the thousands (where the loop's own
    float32 sums round by more than 1e-4)."""
    return bool(torch.all((ours - loop).abs() <= 1e-4 + 1e-6 * loop.abs()))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_search_with_the_closed_form_gives_the_loops_nbest(family):
    model = tiny_model(family)
    with torch.no_grad():
        model.ctc.bias[0] += 2.0
    enc, enc_lens = _encode(model, seed=4)
    cfg = BeamConfig(beam=5, nbest=5, ctc_weight=0.5, max_len_ratio=0.5)
    ours = beam_search(model, enc, enc_lens, cfg)
    loop = beam_search(model, enc, enc_lens, cfg, ctc_scorer=LoopCTCPrefixScorer)
    for got, want in zip(ours, loop):
        assert [h.tokens for h in got] == [h.tokens for h in want]
        assert all(math.isclose(g.score, w.score, abs_tol=1e-4) for g, w in zip(got, want))


def test_invalid_beam_settings():
    model = tiny_model("pblstm-lstm")
    enc, enc_lens = _encode(model)
    for bad in [BeamConfig(beam=0), BeamConfig(beam=2, nbest=3), BeamConfig(ctc_weight=1.5)]:
        with pytest.raises(ValueError):
            beam_search(model, enc, enc_lens, bad)
