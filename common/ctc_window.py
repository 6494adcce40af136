"""CTC prefix scoring in a window of frames around each hypothesis (ESPnet's margin), optional.

The exact scorer (`common.ctc_prefix`) sums every frame from the prefix's length to the
utterance's end, so a step costs O(T) per row and an utterance O(L x T). With a margin of m frames,
a row's next token must be first emitted within m frames of where its last token most likely was
first emitted (the argmax of that token's first-emission posterior, which the forward variables
give; ESPnet centres its window on the attention's peak, which our decoder steps do not return),
and the token's frames end inside that window: after it the prefix goes on through blanks alone.
A step then computes 2m + 2 frames per row, and a cumulative sum of blanks (computed once) fills
in the rest. It is an approximation, off unless asked for; its WER change and speed are measured
in docs/benchmarks.md. The first token is scored over every frame (there is no last token yet).
Windows are per row, so a padded batch scores every prefix as its utterance would alone.
"""

from __future__ import annotations

import torch

from common.ctc_prefix import NEG_INF, CTCPrefixScorer, CTCState, Extension, forward_variables
from common.tokenizer import BLANK_ID


class WindowedCTCPrefixScorer(CTCPrefixScorer):
    def __init__(self, log_probs: torch.Tensor, lens: torch.Tensor, margin: int) -> None:
        """log_probs (N, T, V) per row, lens (N,) valid frames, margin m >= 1 frames."""
        if margin < 1:
            raise ValueError(f"a CTC window's margin must be >= 1 frame, not {margin}")
        super().__init__(log_probs, lens)
        self.margin = margin
        device = log_probs.device
        self.offsets = torch.arange(-margin - 1, margin + 1, device=device).unsqueeze(1)  # (W, 1)
        self.halves = torch.tensor([0, 1], device=device).view(1, 2, 1)   # r's [non-blank, blank]
        self.blank_sum = torch.cumsum(self.x[:, :, BLANK_ID].double(), dim=0)   # (T, N)

    def initial_state(self) -> CTCState:
        state = super().initial_state()
        state.peak = torch.full_like(state.last, -1)
        return state

    def _frames(self, state: CTCState, cand: torch.Tensor):
        """Per row, frames peak - m - 1 .. peak + m (W = 2m + 2): the first holds only the parent's
        variables that the window starts from; a token may be first emitted in the others that are
        real frames at or past the parent's length."""
        if state.length == 0:
            return super()._frames(state, cand)
        t_max, n, vocab = self.x.shape
        frames = state.peak + self.offsets                                      # (W, N)
        # (frame, row) pairs as flat offsets: `take` is a third of advanced indexing's time on a CPU
        at = frames.clamp(0, t_max - 1) * n + torch.arange(n, device=cand.device)   # (W, N)
        xs = torch.take(self.x, (at * vocab).unsqueeze(-1) + cand)              # (W, N, C)
        outside = (frames < state.length) | (frames >= t_max)
        xs = xs.masked_fill(outside.unsqueeze(-1), NEG_INF)
        both = (at + (at // n) * n).unsqueeze(1) + self.halves * n             # (W, 2, N)
        return xs, torch.take(state.r, both), 0, frames

    def _complete(self, state: CTCState, r_sum: torch.Tensor) -> torch.Tensor:
        """A window's frames may end before the last: read the last frame's variables."""
        return torch.logaddexp(state.r[-1, 0], state.r[-1, 1])

    def select(self, ext: Extension, rows: torch.Tensor, cols: torch.Tensor, tokens: torch.Tensor,
               length: int) -> CTCState:
        xs, phi = ext.xs[:, rows, cols], ext.phi[:, rows, cols]                 # (W, K)
        at_peak = _first_emission(xs, phi, ext.first)                           # (K,) held-frame index
        if ext.frames is None:
            state = super().select(ext, rows, cols, tokens, length)
            state.peak = ext.lo + at_peak
            return state
        frames = ext.frames[:, rows]                                            # (W, K)
        t_max, n, vocab = self.x.shape
        blank = torch.take(self.x, (frames.clamp(0, t_max - 1) * n + rows) * vocab + BLANK_ID)
        window = forward_variables(xs, phi, blank, first=False)                 # (W, 2, K)
        # where no first emission is possible (the prefix is), the window's first allowed frame
        peak = frames.gather(0, at_peak.unsqueeze(0)).squeeze(0).clamp(length - 1, t_max - 1)
        return CTCState(r=self._spread(window, frames, rows), psi=ext.psi[rows, cols], last=tokens,
                        length=length, peak=peak)

    def _spread(self, window: torch.Tensor, frames: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """A window's forward variables (W, 2, K) -> every frame's (T, 2, K): -inf before the
        window, and after it blanks alone from the window's last frame."""
        t_max, w = self.x.shape[0], frames.shape[0]
        pos = torch.arange(t_max, device=frames.device).unsqueeze(1) - frames[0].unsqueeze(0)  # (T, K)
        r = window.gather(0, pos.clamp(0, w - 1).unsqueeze(1).expand(-1, 2, -1))
        r = r.masked_fill((pos < 0).unsqueeze(1), NEG_INF)
        after = pos >= w                       # only where the window ends before the last frame
        end = frames[-1].clamp(0, t_max - 1).unsqueeze(0)                      # (1, K)
        blanks = self.blank_sum.index_select(1, rows)                          # (T, K)
        tail = torch.logaddexp(window[-1, 0], window[-1, 1]).double() + blanks - blanks.gather(0, end)
        r[:, 0] = r[:, 0].masked_fill(after, NEG_INF)
        r[:, 1] = torch.where(after, tail.to(r.dtype), r[:, 1])
        return r

    def trim_time(self, state: CTCState, frames: int) -> tuple[CTCPrefixScorer, CTCState]:
        out, state = super().trim_time(state, frames)
        out.blank_sum = self.blank_sum[:frames]
        return out, state

    def select_rows(self, rows: torch.Tensor) -> CTCPrefixScorer:
        out = super().select_rows(rows)
        out.blank_sum = self.blank_sum.index_select(1, rows)
        return out


def _first_emission(xs: torch.Tensor, phi: torch.Tensor, first: bool) -> torch.Tensor:
    """(T', K) each -> (K,): the held frame where the token was most likely first emitted."""
    terms = phi[:-1] + xs[1:]
    if first:
        return torch.cat([xs[:1], terms], dim=0).argmax(0)
    return terms.argmax(0) + 1
