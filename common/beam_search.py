"""Batched beam search: every utterance and every hypothesis of a batch in one decoder step.

Rows are utterance-major (row = u * beam + k). Each step runs the decoder once for all
rows, optionally adds CTC prefix scores for each row's best attention candidates, and
picks 2 x beam candidates per utterance with one top-k. Candidates ending in </s> among
the top `beam` are finished; the best `beam` others continue. An utterance is done when
it holds `beam` finished hypotheses or reaches its maximum length (then </s> is forced);
done utterances are dropped from the batch (in groups, with the padding they leave behind)
so that long utterances do not drag short ones along.
With `topm` > 0 every hypothesis also carries, for each of its positions (its tokens and the
final </s>), the attention decoder's top-M token ids and log-probabilities: the teacher's
distributions that word-level KD trains a student on, kept where the search computes them.
`common.beam_search_reference` implements the same rules one hypothesis at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from common.ctc_prefix import CTCPrefixScorer, CTCState, select_state
from common.ctc_window import WindowedCTCPrefixScorer
from common.models.rows import select_rows
from common.tokenizer import BLANK_ID, EOS_ID, SOS_ID

NEG_INF = float("-inf")


@dataclass
class BeamConfig:
    beam: int = 10
    nbest: int = 1
    ctc_weight: float = 0.0        # joint decoding: (1 - w) * attention + w * CTC prefix score
    length_penalty: float = 1.0    # ranking score = log p / (tokens incl. </s>) ** length_penalty
    max_len_ratio: float = 1.0     # at most ratio x encoder frames output tokens (at least 1)
    ctc_candidates: float = 1.5    # CTC scores the ceil(ratio x beam) best attention tokens per row
    topm: int = 0                  # keep the decoder's top-M tokens per position (word-level KD)
    ctc_window: int = 0            # CTC scores a row's next token only within this many frames of
                                   # its last one (common.ctc_window; 0: every frame, exact)

    def validate(self) -> None:
        if self.beam < 1:
            raise ValueError("beam must be >= 1")
        if not 1 <= self.nbest <= self.beam:
            raise ValueError(f"nbest must be in 1..beam ({self.beam})")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError("ctc_weight must be in [0, 1]")
        if self.max_len_ratio <= 0:
            raise ValueError("max_len_ratio must be > 0")
        if self.topm < 0:
            raise ValueError("topm must be >= 0")
        if self.ctc_window < 0:
            raise ValueError("ctc_window must be >= 0 frames (0: no window)")
        if self.ctc_window and not self.ctc_weight:
            raise ValueError("ctc_window windows the CTC prefix scores: it needs ctc_weight > 0")


@dataclass
class Hypothesis:
    tokens: list[int]              # output tokens, without </s>
    logp: float                    # accumulated (joint) log-probability, </s> included
    score: float                   # length-normalised score used for ranking
    text: str = field(default="")
    topm_ids: list[list[int]] | None = None      # per position (tokens + </s>): top-M token ids
    topm_logp: list[list[float]] | None = None   # and their attention log-probabilities


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped longest first into batches of similar length (little padding).

    The attention energies cost rows x frames each step whatever the batching, so padding
    is pure waste and batches too large to stay in cache are slower on a CPU.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def default_batch_size(device: torch.device) -> int:
    return 64 if device.type == "cuda" else 8


def max_lengths(enc_lens: torch.Tensor, ratio: float) -> list[int]:
    return [max(1, int(math.floor(ratio * int(n)))) for n in enc_lens]


def normalised(logp: float, length: int, penalty: float) -> float:
    return logp / (length ** penalty) if penalty else logp


# (CTC log-probs (N, T, V), lengths (N,)) -> a prefix scorer over those rows
ScorerFactory = Callable[[torch.Tensor, torch.Tensor], CTCPrefixScorer]


def ctc_scorer_for(cfg: BeamConfig) -> ScorerFactory:
    if cfg.ctc_window:
        return partial(WindowedCTCPrefixScorer, margin=cfg.ctc_window)
    return CTCPrefixScorer


def ctc_candidate_count(cfg: BeamConfig, vocab: int) -> int:
    return min(vocab, int(math.ceil(cfg.ctc_candidates * cfg.beam)))


@dataclass
class _Rows:
    """The search's per-row tensors (row = live utterance x beam), selected together."""

    memory: object                  # the decoder's prepared encoder output
    state: object                   # the decoder's recurrent state
    scores: torch.Tensor            # (N,) accumulated log-probabilities
    history: torch.Tensor           # (N, t) tokens so far
    last: torch.Tensor              # (N,) the last token
    top_ids: torch.Tensor           # (N, t, M) the decoder's top-M per position (topm > 0)
    top_lp: torch.Tensor            # (N, t, M)
    scorer: CTCPrefixScorer | None  # joint CTC decoding only
    ctc_state: CTCState | None

    def compact(self, keep: torch.Tensor, decoder, frames: int | None) -> None:
        """Keep rows `keep` (of the utterances still live), then drop the time steps past the
        longest remaining utterance (`frames`; None when none remains)."""
        self.memory, self.state = select_rows(self.memory, keep), select_rows(self.state, keep)
        self.scores, self.history, self.last = self.scores[keep], self.history[keep], self.last[keep]
        self.top_ids, self.top_lp = self.top_ids[keep], self.top_lp[keep]
        if self.scorer is not None:
            self.scorer = self.scorer.select_rows(keep)
            self.ctc_state = select_state(self.ctc_state, keep)
        if frames is not None:
            self.memory, self.state = decoder.trim_time(self.memory, self.state, frames)
            if self.scorer is not None:
                self.scorer, self.ctc_state = self.scorer.trim_time(self.ctc_state, frames)


@torch.no_grad()
def beam_search(model, enc: torch.Tensor, enc_lens: torch.Tensor, cfg: BeamConfig,
                ctc_scorer: ScorerFactory | None = None) -> list[list[Hypothesis]]:
    """enc (B, T, D), enc_lens (B,) -> per utterance, the N-best hypotheses, best first.

    `ctc_scorer`: another prefix scorer (the reference one, in tests and benchmarks); by default
    the exact one, or with `cfg.ctc_window` > 0 the windowed one (`common.ctc_window`)."""
    cfg.validate()
    batch, k, vocab = enc.shape[0], cfg.beam, model.vocab_size
    device = enc.device
    limit = torch.tensor(max_lengths(enc_lens, cfg.max_len_ratio), device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # done utterances may still hold rows
    active = torch.arange(batch, device=device)          # original ids of live utterances
    b = _initial_rows(model, enc, enc_lens, active.repeat_interleave(k), cfg, ctc_scorer)
    topm, n_cand = min(cfg.topm, vocab), ctc_candidate_count(cfg, vocab)

    step = 0
    while active.numel():
        n_utt = active.numel()
        att, new_state = model.decoder.step(b.last, b.state, b.memory)   # (N, V)
        if topm:   # the decoder's own distribution, before the search masks or mixes it
            step_lp, step_ids = att.topk(topm, dim=1)                      # (N, M)
            b.top_lp = torch.cat([b.top_lp, step_lp.unsqueeze(1)], dim=1)  # (N, t + 1, M)
            b.top_ids = torch.cat([b.top_ids, step_ids.unsqueeze(1)], dim=1)
        att[:, BLANK_ID] = NEG_INF
        joint, cand, extension = _joint(att, b, cfg, n_cand)
        _force_end(joint, (limit.index_select(0, active) <= step + 1).repeat_interleave(k))
        total = (b.scores.unsqueeze(1) + joint).view(n_utt, k * vocab)
        top_scores, top_idx = total.topk(2 * k, dim=1)               # (U, 2k), best first
        src = top_idx // vocab + (torch.arange(n_utt, device=device) * k).unsqueeze(1)
        tok = top_idx % vocab
        is_eos = tok == EOS_ID

        ends = is_eos & (torch.arange(2 * k, device=device) < k) & torch.isfinite(top_scores)
        ends &= ~done.index_select(0, active).unsqueeze(1)
        if bool(ends.any()):
            _collect(finished, active, ends, src, top_scores, b.history, cfg,
                     (b.top_ids, b.top_lp) if topm else None)
        keep = ~is_eos
        keep &= (keep.cumsum(1) <= k)
        new_rows, new_tok = src[keep], tok[keep]                   # (U * k,), utterance-major
        b.scores = top_scores[keep]
        b.state = select_rows(new_state, new_rows)
        b.history = torch.cat([b.history.index_select(0, new_rows), new_tok.unsqueeze(1)], dim=1)
        b.top_ids, b.top_lp = b.top_ids.index_select(0, new_rows), b.top_lp.index_select(0, new_rows)
        b.last = new_tok
        if b.scorer is not None:
            col = _candidate_column(cand, new_rows, new_tok)
            b.ctc_state = b.scorer.select(extension, new_rows, col, new_tok, step + 1)
        step += 1

        for u in active.tolist():
            if len(finished[u]) >= k or int(limit[u]) <= step:
                done[u] = True
        live = ~done.index_select(0, active)
        if int(live.sum()) <= (3 * n_utt) // 4:  # compact lazily: copies cost as much as steps
            keep_rows = (live.nonzero().squeeze(1) * k).unsqueeze(1) + torch.arange(k, device=device)
            active = active[live]
            # drop the padding of the utterances that left
            frames = int(enc_lens.index_select(0, active).max()) if active.numel() else None
            b.compact(keep_rows.reshape(-1), model.decoder, frames)

    return [nbest(hyps, cfg.nbest) for hyps in finished]


def _initial_rows(model, enc: torch.Tensor, enc_lens: torch.Tensor, rows: torch.Tensor, cfg: BeamConfig,
                  ctc_scorer: ScorerFactory | None) -> _Rows:
    """Every utterance's beam of rows before the first step: one live hypothesis (<s>) each."""
    n, k, device = rows.numel(), cfg.beam, enc.device
    memory = model.decoder.prepare(enc.index_select(0, rows), enc_lens.index_select(0, rows))
    scores = torch.full((n // k, k), NEG_INF, device=device)
    scores[:, 0] = 0.0
    topm = min(cfg.topm, model.vocab_size)
    scorer = ctc_state = None
    if cfg.ctc_weight > 0:
        log_probs, lens = model.ctc_log_probs(enc).index_select(0, rows), enc_lens.index_select(0, rows)
        scorer = (ctc_scorer or ctc_scorer_for(cfg))(log_probs, lens)
        ctc_state = scorer.initial_state()
    return _Rows(memory=memory, state=model.decoder.init_state(memory), scores=scores.view(-1),
                 history=torch.zeros(n, 0, dtype=torch.long, device=device),
                 last=torch.full((n,), SOS_ID, dtype=torch.long, device=device),
                 top_ids=torch.zeros(n, 0, topm, dtype=torch.long, device=device),   # (N, t, M)
                 top_lp=torch.zeros(n, 0, topm, device=device), scorer=scorer, ctc_state=ctc_state)


def _joint(att: torch.Tensor, b: _Rows, cfg: BeamConfig, n_cand: int):
    """(N, V) attention log-probs -> the step's joint scores (N, V), and for joint CTC decoding
    the candidates scored (N, C) and the scorer's extension (for the rows kept)."""
    if b.scorer is None:
        return att, None, None
    cand = pick_ctc_candidates(att, n_cand)                      # (N, C)
    delta, extension = b.scorer.score(b.ctc_state, cand)
    joint = torch.full_like(att, NEG_INF)
    joint.scatter_(1, cand, (1 - cfg.ctc_weight) * att.gather(1, cand) + cfg.ctc_weight * delta)
    return joint, cand, extension


def _force_end(joint: torch.Tensor, at_limit: torch.Tensor) -> None:
    """Rows at their utterance's maximum length may only end: every score but </s>'s is -inf."""
    if bool(at_limit.any()):
        eos_col = joint[:, EOS_ID].clone()
        joint[at_limit] = NEG_INF
        joint[:, EOS_ID] = eos_col


def nbest(finished: list[Hypothesis], n: int) -> list[Hypothesis]:
    """Best n by normalised score; an utterance that finished nothing gets one empty -inf answer."""
    if not finished:
        return [Hypothesis(tokens=[], logp=NEG_INF, score=NEG_INF)]
    return sorted(finished, key=lambda h: h.score, reverse=True)[:n]


def pick_ctc_candidates(att: torch.Tensor, count: int) -> torch.Tensor:
    """(N, V) attention log-probs -> (N, count) ids: </s> and the best count - 1 others."""
    pick = att.clone()
    pick[:, EOS_ID] = float("inf")  # </s> is always scored, so a forced end is never -inf
    return pick.topk(count, dim=1).indices


def _candidate_column(cand: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Column of each chosen token within its source row's CTC candidate list."""
    return (cand.index_select(0, rows) == tokens.unsqueeze(1)).float().argmax(1)


def _collect(finished: list[list[Hypothesis]], active: torch.Tensor, ends: torch.Tensor,
             src: torch.Tensor, top_scores: torch.Tensor, history: torch.Tensor,
             cfg: BeamConfig, tops: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Move hypotheses that just emitted </s> into their utterance's finished list, in rank order.

    `tops` (ids, log-probs), (N, t + 1, M): the rows' top-M per position, this step's included."""
    utts = ends.nonzero()[:, 0].tolist()
    logps = top_scores[ends].tolist()
    rows = src[ends]
    prefixes = history.index_select(0, rows).tolist()
    ids = tops[0].index_select(0, rows).tolist() if tops else [None] * len(utts)
    lps = tops[1].index_select(0, rows).tolist() if tops else [None] * len(utts)
    for u, logp, prefix, top_id, top_lp in zip(utts, logps, prefixes, ids, lps):
        finished[int(active[u])].append(
            Hypothesis(tokens=prefix, logp=logp,
                       score=normalised(logp, len(prefix) + 1, cfg.length_penalty),
                       topm_ids=top_id, topm_logp=top_lp))
