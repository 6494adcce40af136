"""Batched CTC prefix scoring (Watanabe et al., 2017) for joint CTC-attention decoding.

All rows (utterance x beam) advance together; each row scores only its C best attention
candidates (ESPnet's partial scoring). Frames past a row's length are padded with
log p(blank) = 0 and -inf elsewhere, which freezes the forward variables exactly, so a
padded batch scores every prefix as its utterance would alone.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def score(self, state: CTCState, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """cand (N, C) token ids -> (delta (N, C) = psi(g+c) - psi(g), r_new (T, 2, N, C), psi (N, C))."""
        t_max = self.x.shape[0]
        xs = torch.gather(self.x, 2, cand.unsqueeze(0).expand(t_max, -1, -1))  # (T, N, C)
        r_sum = torch.logaddexp(state.r[:, 0], state.r[:, 1])  # (T, N)
        repeat = (cand == state.last.unsqueeze(1)).unsqueeze(0)  # (1, N, C)
        phi = torch.where(repeat, state.r[:, 1].unsqueeze(-1), r_sum.unsqueeze(-1))  # (T, N, C)
        r_new = xs.new_full((t_max, 2) + cand.shape, NEG_INF)
        start = max(1, state.length)
        if state.length == 0:
            r_new[0, 0] = xs[0]
        blank = self.x[:, :, BLANK_ID].unsqueeze(-1)  # (T, N, 1)
        for t in range(start, t_max):
            r_new[t, 0] = torch.logaddexp(r_new[t - 1, 0], phi[t - 1]) + xs[t]
            r_new[t, 1] = torch.logaddexp(r_new[t - 1, 0], r_new[t - 1, 1]) + blank[t]
        terms = phi[start - 1: t_max - 1] + xs[start:]
        if state.length == 0:
            terms = torch.cat([r_new[0, 0].unsqueeze(0), terms], dim=0)
        psi = torch.logsumexp(terms, dim=0) if terms.shape[0] else xs.new_full(cand.shape, NEG_INF)
        psi = torch.where(cand == EOS_ID, r_sum[-1].unsqueeze(-1), psi)
        return psi - state.psi.unsqueeze(1), r_new, psi

    @staticmethod
    def select(r_new: torch.Tensor, psi: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
               tokens: torch.Tensor, length: int) -> CTCState:
        """The state of the chosen (row, candidate column) pairs, one per new row."""
        return CTCState(r=r_new[:, :, rows, cols], psi=psi[rows, cols], last=tokens, length=length)

    def trim_time(self, state: CTCState, frames: int) -> tuple["CTCPrefixScorer", CTCState]:
        """Keep the first `frames` frames: enough for every remaining row, so scores are unchanged."""
        out = CTCPrefixScorer.__new__(CTCPrefixScorer)
        out.x = self.x[:frames]
        return out, CTCState(r=state.r[:frames], psi=state.psi, last=state.last, length=state.length)

    def select_rows(self, rows: torch.Tensor) -> "CTCPrefixScorer":
        out = CTCPrefixScorer.__new__(CTCPrefixScorer)
        out.x = self.x.index_select(1, rows)
        return out


def select_state(state: CTCState, rows: torch.Tensor) -> CTCState:
    return CTCState(r=state.r.index_select(2, rows), psi=state.psi.index_select(0, rows),
                    last=state.last.index_select(0, rows), length=state.length)
