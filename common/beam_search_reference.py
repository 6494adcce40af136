"""Reference beam search: one utterance, one hypothesis, one token at a time.

Deliberately plain (Python lists, a decoder call per hypothesis, CTC prefix
probabilities recomputed from scratch for every prefix) so that it is easy to check by
eye. Its only job is to be the oracle for `common.beam_search.beam_search`, which must
return the same N-best token for token; the rules here are the ones documented there.
"""

from __future__ import annotations

import math

import torch

from common.beam_search import (BeamConfig, Hypothesis, ctc_candidate_count, max_lengths, nbest,
                                normalised)
from common.ctc_prefix import CTCPrefixScorer, CTCState, Extension
from common.tokenizer import BLANK_ID, EOS_ID, SOS_ID

NEG_INF = float("-inf")


def _logadd(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def ctc_prefix_scores(logp: list[list[float]], prefix: list[int], margin: int = 0) -> tuple[float, float]:
    """(log P(labelling starts with prefix), log P(labelling is exactly prefix)) under CTC,
    by the textbook forward recursion over T frames of log-probs logp[t][v].

    `margin` > 0: under `common.ctc_window`'s rule, each token after the first is first emitted
    within `margin` frames of the frame where the token before it most likely was, and its frames
    end there (blanks alone after). 0: every frame."""
    frames = len(logp)
    r_n = [NEG_INF] * frames
    r_b = [sum(logp[u][BLANK_ID] for u in range(t + 1)) for t in range(frames)]
    psi, peak = 0.0, 0
    for i, c in enumerate(prefix):
        if i == 0 or not margin:   # a token after i others is first emitted at frame i or later
            lo, hi = i, frames - 1
        else:
            lo, hi = max(i, peak - margin), min(frames - 1, peak + margin)
        new_n, new_b = [NEG_INF] * frames, [NEG_INF] * frames
        firsts = {}   # frame -> log P(the prefix so far, then c first emitted at that frame)
        for t in range(lo, hi + 1):
            if t == 0:
                firsts[t] = logp[0][c]
            else:
                phi = r_b[t - 1] if i > 0 and prefix[i - 1] == c else _logadd(r_n[t - 1], r_b[t - 1])
                firsts[t] = phi + logp[t][c]
        for t in range(frames):
            held = new_n[t - 1] + logp[t][c] if t > 0 and t <= hi else NEG_INF
            new_n[t] = _logadd(held, firsts.get(t, NEG_INF))
            if t > 0:
                new_b[t] = _logadd(new_n[t - 1], new_b[t - 1]) + logp[t][BLANK_ID]
        psi = NEG_INF
        for value in firsts.values():
            psi = _logadd(psi, value)
        best = max(firsts.values(), default=NEG_INF)
        peak = next((t for t in sorted(firsts) if firsts[t] == best), lo)
        r_n, r_b = new_n, new_b
    return psi, _logadd(r_n[-1], r_b[-1])


@torch.no_grad()
def reference_beam_search(model, enc: torch.Tensor, enc_len: int,
                          cfg: BeamConfig) -> list[Hypothesis]:
    """enc (1, T, D) of one utterance (unpadded) -> its N-best, best first."""
    k = cfg.beam
    enc = enc[:, :enc_len]
    lens = torch.tensor([enc_len])
    memory = model.decoder.prepare(enc, lens)
    (limit,) = max_lengths(lens, cfg.max_len_ratio)
    ctc_logp = model.ctc_log_probs(enc)[0].tolist() if cfg.ctc_weight > 0 else None
    n_cand = ctc_candidate_count(cfg, model.vocab_size)

    # a running hypothesis: (score, tokens, decoder state, CTC prefix log-prob)
    running = [(0.0, [], model.decoder.init_state(memory), 0.0)]
    finished: list[Hypothesis] = []
    for step in range(limit):
        candidates = []  # (score, tokens + [v], state, ctc psi)
        for score, tokens, state, psi in running:
            last = tokens[-1] if tokens else SOS_ID
            att, new_state = model.decoder.step(torch.tensor([last]), state, memory)
            att = att[0].tolist()
            att[BLANK_ID] = NEG_INF
            joint = _joint_scores(att, tokens, psi, ctc_logp, cfg, n_cand)
            if step + 1 >= limit:
                joint = {v: s for v, s in joint.items() if v == EOS_ID}
            for v, (s, new_psi) in joint.items():
                if score + s > NEG_INF:
                    candidates.append((score + s, tokens + [v], new_state, new_psi))
        candidates.sort(key=lambda c: c[0], reverse=True)
        top = candidates[: 2 * k]
        for rank, (score, tokens, _, _) in enumerate(top):
            if tokens[-1] == EOS_ID and rank < k:
                finished.append(Hypothesis(tokens=tokens[:-1], logp=score,
                                           score=normalised(score, len(tokens), cfg.length_penalty)))
        running = [c for c in top if c[1][-1] != EOS_ID][:k]
        if len(finished) >= k or not running:
            break
    return nbest(finished, cfg.nbest)


def _joint_scores(att: list[float], tokens: list[int], psi: float, ctc_logp, cfg: BeamConfig,
                  n_cand: int) -> dict[int, tuple[float, float]]:
    """token -> (step score, new CTC prefix log-prob) for every token worth considering."""
    if ctc_logp is None:
        return {v: (a, 0.0) for v, a in enumerate(att) if a > NEG_INF}
    others = sorted((v for v in range(len(att)) if v != EOS_ID), key=lambda v: att[v], reverse=True)
    out = {}
    for v in [EOS_ID] + others[: n_cand - 1]:
        if att[v] == NEG_INF:
            continue
        new_psi = (ctc_prefix_scores(ctc_logp, tokens)[1] if v == EOS_ID
                   else ctc_prefix_scores(ctc_logp, tokens + [v])[0])
        out[v] = ((1 - cfg.ctc_weight) * att[v] + cfg.ctc_weight * (new_psi - psi), new_psi)
    return out


class LoopCTCPrefixScorer(CTCPrefixScorer):
    """The batched scorer with the forward variables computed frame by frame, as written in
    Watanabe et al. (2017): the plain way that `forward_variables`' closed form must match, and
    what the benchmarks compare it with."""

    def select(self, ext: Extension, rows: torch.Tensor, cols: torch.Tensor, tokens: torch.Tensor,
               length: int) -> CTCState:
        xs, phi = ext.xs[:, rows, cols], ext.phi[:, rows, cols]            # (T', K): frames lo..
        blank = self.x[ext.lo:, :, BLANK_ID].index_select(1, rows)
        r = xs.new_full((self.x.shape[0], 2, xs.shape[1]), NEG_INF)
        if ext.first:
            r[0, 0] = xs[0]
        for t in range(ext.lo + 1, self.x.shape[0]):
            i = t - ext.lo
            r[t, 0] = torch.logaddexp(r[t - 1, 0], phi[i - 1]) + xs[i]
            r[t, 1] = torch.logaddexp(r[t - 1, 0], r[t - 1, 1]) + blank[i]
        return CTCState(r=r, psi=ext.psi[rows, cols], last=tokens, length=length)
