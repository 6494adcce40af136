"""LSTM decoder with location-aware attention (Listen, Attend and Spell style).

s_i = LSTM(s_{i-1}, [emb(y_{i-1}); c_{i-1}]),  c_i = Attend(s_i, h, a_{i-1}),
p(y_i) = softmax(W [s_i; c_i]).
The same `step` serves teacher-forced training and beam search, so they cannot drift.
"""

from __future__ import annotations

import torch
from torch import nn

from common.models.attention import LocationAwareAttention
from common.models.config import LSTMDecoderConfig
from common.models.interfaces import DecoderStep
from common.models.rows import Rows, lengths_to_mask, select_rows
from common.models.trie import PrefixTrie


class LSTMAttentionDecoder(nn.Module, DecoderStep):
    STATE_TIME_AXES = {"att": {1: "enc_frames"}}   # state axes past the row that vary (exported graphs)

    def __init__(self, cfg: LSTMDecoderConfig, enc_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.embed)
        self.cells = nn.ModuleList(
            [nn.LSTMCell(cfg.embed + enc_dim if i == 0 else cfg.hidden, cfg.hidden)
             for i in range(cfg.layers)])
        self.attention = LocationAwareAttention(enc_dim, cfg.hidden, cfg.att_dim,
                                                cfg.att_conv_channels, cfg.att_conv_kernel)
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(cfg.hidden + enc_dim, vocab_size)

    def prepare(self, enc: torch.Tensor, enc_lens: torch.Tensor) -> Rows:
        """Per-row encoder memory: (N, T, D) output, its projection, and the valid mask."""
        return self.memory(self.frame_memory(enc), enc_lens)

    def frame_memory(self, enc: torch.Tensor) -> Rows:
        """The memory computed from the encoder output frame by frame (what an exported encoder
        graph computes once per utterance): (N, T, D) output and its (N, T, A) projection."""
        return {"enc": enc, "proj": self.attention.project(enc)}

    @staticmethod
    def memory(frames: Rows, enc_lens: torch.Tensor) -> Rows:
        """Frame memory + lengths -> the memory `step` reads (weight-free, so the ONNX backend
        builds it the same way)."""
        return {**frames, "mask": lengths_to_mask(enc_lens, frames["enc"].shape[1]), "lens": enc_lens}

    def init_state(self, memory: Rows) -> Rows:
        return self.initial_state(memory, self.cfg)

    @staticmethod
    def initial_state(memory: Rows, cfg: LSTMDecoderConfig) -> Rows:
        enc, mask = memory["enc"], memory["mask"]
        n = enc.shape[0]
        zeros = enc.new_zeros(n, cfg.layers, cfg.hidden)  # (N, layers, H)
        prev = mask.to(enc.dtype) / memory["lens"].unsqueeze(1).to(enc.dtype)  # uniform over valid frames
        return {"h": zeros, "c": zeros.clone(), "ctx": enc.new_zeros(n, enc.shape[2]), "att": prev}

    def step(self, tokens: torch.Tensor, state: Rows, memory: Rows) -> tuple[torch.Tensor, Rows]:
        """tokens (N,) -> log-probs (N, V), next state."""
        logits, state = self._step(tokens, state, memory)
        return torch.log_softmax(logits, dim=-1), state

    def _step(self, tokens: torch.Tensor, state: Rows, memory: Rows) -> tuple[torch.Tensor, Rows]:
        x = torch.cat([self.embed(tokens), state["ctx"]], dim=-1)
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            h, c = cell(x, (state["h"][:, i], state["c"][:, i]))
            hs.append(h)
            cs.append(c)
            x = self.dropout(h)
        ctx, att = self.attention(memory["enc"], memory["proj"], memory["mask"], hs[-1], state["att"])
        logits = self.output(torch.cat([x, ctx], dim=-1))
        return logits, {"h": torch.stack(hs, 1), "c": torch.stack(cs, 1), "ctx": ctx, "att": att}

    @staticmethod
    def trim_time(memory: Rows, state: Rows, frames: int) -> tuple[Rows, Rows]:
        """Drop encoder frames past `frames` (all padding for the remaining rows)."""
        memory = {**memory, "enc": memory["enc"][:, :frames], "proj": memory["proj"][:, :frames],
                  "mask": memory["mask"][:, :frames]}
        return memory, {**state, "att": state["att"][:, :frames]}

    def forward(self, memory: Rows, ys_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: ys_in (N, L) -> logits (N, L, V)."""
        state = self.init_state(memory)
        out = []
        for t in range(ys_in.shape[1]):
            logits, state = self._step(ys_in[:, t], state, memory)
            out.append(logits)
        return torch.stack(out, dim=1)

    def forward_trie(self, memory: Rows, trie: PrefixTrie) -> torch.Tensor:
        """Teacher forcing over a prefix trie, memory one row per utterance -> logits (M, V) of its
        nodes. One step per level over its unique nodes, each continuing its parent's state (the
        LSTM state, context and previous alignment all belong to the prefix, so sharing is exact)."""
        state, out = self.init_state(memory), []
        for level, above in trie.levels():
            state = select_rows(state, above)
            logits, state = self._step(trie.token[level], state, select_rows(memory, trie.owner[level]))
            out.append(logits)
        return torch.cat(out)
