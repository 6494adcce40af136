"""Batched CTC prefix scoring (Watanabe et al., 2017) for joint CTC-attention decoding.

All rows (utterance x beam) advance together; each row scores only its C best attention
candidates (ESPnet's partial scoring). Frames past a row's length are padded with
log p(blank) = 0 and -inf elsewhere, which freezes the forward variables exactly, so a
padded batch scores every prefix as its utterance would alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from common.models.rows import lengths_to_mask
from common.tokenizer import BLANK_ID, EOS_ID

NEG_INF = float("-inf")


@dataclass
class CTCState:
    r: torch.Tensor      # (T, 2, N): log forward vars of each row's prefix, [non-blank, blank] end
    psi: torch.Tensor    # (N,): log prefix probability of each row's prefix
    last: torch.Tensor   # (N,): last token of the prefix (-1 for the empty prefix)
    length: int          # prefix length, the same for every row at a given step
    peak: torch.Tensor | None = None  # (N,): frame where the last token was most likely first
                                      # emitted (the windowed scorer's; -1 for the empty prefix)


@dataclass
class Extension:
    """What `score` computed for every candidate, kept for the few that `select` extends.

    Only frames from `lo` on: a prefix of L tokens cannot end before frame L - 1, so the frames
    before the parent's length hold -inf for every extension and are never computed."""
    xs: torch.Tensor     # (T', N, C): log p(candidate) per frame held
    phi: torch.Tensor    # (T', N, C): log prob. of the parent's prefix being complete
    psi: torch.Tensor    # (N, C): log prefix probability of each extended prefix
    lo: int              # the first frame held: frames lo .. T - 1
    first: bool          # the parent is the empty prefix: the token may be frame 0's label
    frames: torch.Tensor | None = None  # (T', N): per row, the frames held (a window) instead


class CTCPrefixScorer:
    def __init__(self, log_probs: torch.Tensor, lens: torch.Tensor) -> None:
        """log_probs (N, T, V) per row, lens (N,) valid frames."""
        x = log_probs.transpose(0, 1).clone()  # (T, N, V)
        pad = ~lengths_to_mask(lens, x.shape[0]).transpose(0, 1)  # (T, N) True past the end
        x.masked_fill_(pad.unsqueeze(-1), NEG_INF)
        x[..., BLANK_ID] = x[..., BLANK_ID].masked_fill(pad, 0.0)
        self.x = x

    def initial_state(self) -> CTCState:
        t, n, _ = self.x.shape
        r = self.x.new_full((t, 2, n), NEG_INF)
        r[:, 1] = torch.cumsum(self.x[:, :, BLANK_ID], dim=0)
        return CTCState(r=r, psi=self.x.new_zeros(n),
                        last=torch.full((n,), -1, dtype=torch.long, device=self.x.device), length=0)

    def score(self, state: CTCState, cand: torch.Tensor) -> tuple[torch.Tensor, Extension]:
        """cand (N, C) token ids -> (delta (N, C) = psi(g+c) - psi(g), the extension for `select`).

        psi(g+c) needs only the parent's forward variables: sum over t of phi(t-1) x_c(t), one
        `logsumexp` over frames. The extended prefix's own variables are computed by `select`,
        for the rows the search keeps."""
        xs, r, lo, frames = self._frames(state, cand)                 # (T', N, C), (T', 2, N)
        first = state.length == 0
        r_sum = torch.logaddexp(r[:, 0], r[:, 1])                     # (T', N)
        repeat = (cand == state.last.unsqueeze(1)).unsqueeze(0)       # (1, N, C)
        phi = torch.where(repeat, r[:, 1].unsqueeze(-1), r_sum.unsqueeze(-1))  # (T', N, C)
        terms = phi[:-1] + xs[1:]
        if first:   # the token can be the first frame's label
            terms = torch.cat([xs[:1], terms], dim=0)
        psi = torch.logsumexp(terms, dim=0) if terms.shape[0] else xs.new_full(cand.shape, NEG_INF)
        psi = torch.where(cand == EOS_ID, self._complete(state, r_sum).unsqueeze(-1), psi)
        return psi - state.psi.unsqueeze(1), Extension(xs=xs, phi=phi, psi=psi, lo=lo, first=first,
                                                       frames=frames)

    def _frames(self, state: CTCState, cand: torch.Tensor):
        """The frames a step scores: from the parent's length on (a prefix of L tokens cannot
        end before frame L - 1). -> the candidates' log-probs there (T', N, C), the parent's
        forward variables (T', 2, N), the first frame, and None (the same frames for every row)."""
        t_max = self.x.shape[0]
        lo = min(max(1, state.length), t_max) - 1                   # frame start - 1
        xs = torch.gather(self.x[lo:], 2, cand.unsqueeze(0).expand(t_max - lo, -1, -1))
        return xs, state.r[lo:], lo, None

    def _complete(self, state: CTCState, r_sum: torch.Tensor) -> torch.Tensor:
        """(N,) log probability that each row's prefix is the whole labelling: its forward
        variables at the last frame, the last of the frames scored."""
        return r_sum[-1]

    def select(self, ext: Extension, rows: torch.Tensor, cols: torch.Tensor, tokens: torch.Tensor,
               length: int) -> CTCState:
        """The state of the chosen (row, candidate column) pairs, one per new row."""
        xs, phi = ext.xs[:, rows, cols], ext.phi[:, rows, cols]            # (T', K)
        blank = self.x[ext.lo:, :, BLANK_ID].index_select(1, rows)        # (T', K)
        r = self.x.new_full((self.x.shape[0], 2, rows.numel()), NEG_INF)
        r[ext.lo:] = forward_variables(xs, phi, blank, ext.first)
        return CTCState(r=r, psi=ext.psi[rows, cols], last=tokens, length=length)

    def trim_time(self, state: CTCState, frames: int) -> tuple["CTCPrefixScorer", CTCState]:
        """Keep the first `frames` frames: enough for every remaining row, so scores are unchanged."""
        out = copy.copy(self)
        out.x = self.x[:frames]
        return out, replace(state, r=state.r[:frames])

    def select_rows(self, rows: torch.Tensor) -> "CTCPrefixScorer":
        out = copy.copy(self)
        out.x = self.x.index_select(1, rows)
        return out


def select_state(state: CTCState, rows: torch.Tensor) -> CTCState:
    return CTCState(r=state.r.index_select(2, rows), psi=state.psi.index_select(0, rows),
                    last=state.last.index_select(0, rows), length=state.length,
                    peak=None if state.peak is None else state.peak.index_select(0, rows))


# Past a row's end every non-blank frame is -inf; the closed form below needs finite sums, so
# such frames count as this (float64: digits stay exact beside it), and are -inf again after.
_FLOOR = -1e5


def forward_variables(xs: torch.Tensor, phi: torch.Tensor, blank: torch.Tensor, first: bool) -> torch.Tensor:
    """The forward variables of prefixes g+c from frame lo = start - 1 on, (T', K) each -> (T', 2, K),
    without a loop over frames.

    The recursion (Watanabe et al., 2017, Algorithm 2), for t >= 1 (frame lo + t):
        r_n(t) = x_c(t) + logaddexp(r_n(t-1), phi(t-1))
        r_b(t) = x_blank(t) + logaddexp(r_n(t-1), r_b(t-1))
    from r_n(0) = x_c(0) if `first` (a one-token prefix may label frame 0) else -inf, r_b(0) = -inf,
    is linear in the log semiring. With A(t) = x_c(1) + ... + x_c(t) (A(0) = 0),
        r_n(t) = A(t) + logcumsumexp over s <= t of z(s),   z(0) = r_n(0),  z(s) = phi(s-1) - A(s-1),
    and r_b likewise with the blank's sums and r_n for phi. Two cumulative sums and two
    `logcumsumexp`s, in float64 (A runs to thousands, and float32 would lose the digits that the
    differences keep): a fixed number of tensor operations whatever the number of frames.
    """
    x = xs.double()
    k = x.shape[1]
    init = x[0] if first else x.new_full((k,), NEG_INF)
    a = torch.cat([x.new_zeros(1, k), torch.cumsum(x[1:].clamp_min(_FLOOR), dim=0)])
    z = torch.cat([init.unsqueeze(0), phi[:-1].double() - a[:-1]])
    r_n = (a + torch.logcumsumexp(z, dim=0)).masked_fill(torch.isneginf(x), NEG_INF)
    b = torch.cat([x.new_zeros(1, k), torch.cumsum(blank[1:].double(), dim=0)])
    z_b = torch.cat([x.new_full((1, k), NEG_INF), r_n[:-1] - b[:-1]])
    r_b = b + torch.logcumsumexp(z_b, dim=0)
    return torch.stack([r_n, r_b], dim=1).to(xs.dtype)
