"""Transformer decoder over the encoder output (the Conformer family's decoder).

Beam search state is the token prefix; each step re-runs the (short) prefix, which keeps
batched and single-utterance decoding bit-for-bit the same computation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from common.models.config import TransformerDecoderConfig
from common.models.conformer import sinusoidal_positions
from common.models.interfaces import DecoderStep
from common.models.rows import Rows, lengths_to_mask
from common.models.trie import PrefixTrie
from common.tokenizer import EOS_ID


class TransformerDecoder(nn.Module, DecoderStep):
    STATE_TIME_AXES = {"prefix": {1: "prefix"}}    # state axes past the row that vary (exported graphs)

    def __init__(self, cfg: TransformerDecoderConfig, enc_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.memory_proj = nn.Linear(enc_dim, cfg.d_model) if enc_dim != cfg.d_model else nn.Identity()
        layer = nn.TransformerDecoderLayer(cfg.d_model, cfg.heads, cfg.ffn, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, cfg.layers, norm=nn.LayerNorm(cfg.d_model))
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(cfg.d_model, vocab_size)

    def prepare(self, enc: torch.Tensor, enc_lens: torch.Tensor) -> Rows:
        return self.memory(self.frame_memory(enc), enc_lens)

    def frame_memory(self, enc: torch.Tensor) -> Rows:
        """The memory computed from the encoder output frame by frame: (N, T, d_model)."""
        return {"enc": self.memory_proj(enc)}

    @staticmethod
    def memory(frames: Rows, enc_lens: torch.Tensor) -> Rows:
        """Frame memory + lengths -> the memory `step` reads (weight-free, shared with ONNX)."""
        return {**frames, "pad": ~lengths_to_mask(enc_lens, frames["enc"].shape[1])}

    def init_state(self, memory: Rows) -> Rows:
        return self.initial_state(memory, self.cfg)

    @staticmethod
    def initial_state(memory: Rows, cfg: TransformerDecoderConfig) -> Rows:
        n = memory["enc"].shape[0]
        return {"prefix": torch.zeros(n, 0, dtype=torch.long, device=memory["enc"].device)}

    def step(self, tokens: torch.Tensor, state: Rows, memory: Rows) -> tuple[torch.Tensor, Rows]:
        prefix = torch.cat([state["prefix"], tokens.unsqueeze(1)], dim=1)  # (N, t)
        logits = self.forward(memory, prefix)[:, -1]
        return torch.log_softmax(logits, dim=-1), {"prefix": prefix}

    @staticmethod
    def trim_time(memory: Rows, state: Rows, frames: int) -> tuple[Rows, Rows]:
        """Drop encoder frames past `frames` (all padding for the remaining rows)."""
        return {"enc": memory["enc"][:, :frames], "pad": memory["pad"][:, :frames]}, state

    def forward(self, memory: Rows, ys_in: torch.Tensor) -> torch.Tensor:
        """ys_in (N, L) -> logits (N, L, V) with a causal mask."""
        length = ys_in.shape[1]
        positions = torch.arange(length, device=ys_in.device)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=ys_in.device), 1)
        return self.output(self._hidden(memory, ys_in, positions, causal, is_causal=True))

    def forward_trie(self, memory: Rows, trie: PrefixTrie) -> torch.Tensor:
        """Teacher forcing over a prefix trie, memory one row per utterance -> logits (M, V) of its
        nodes. An utterance's unique nodes are one sequence (S slots) with a tree mask: each node
        attends to itself and its ancestors at position = depth, exactly the keys and positions
        of that prefix in a causal row."""
        b = memory["enc"].shape[0]
        blocked = ~trie.ancestors(b)                                              # (B, S, S)
        tokens = torch.full(blocked.shape[:2], EOS_ID, dtype=torch.long, device=blocked.device)
        positions = torch.zeros_like(tokens)
        tokens[trie.owner, trie.slot], positions[trie.owner, trie.slot] = trie.token, trie.depth
        hidden = self._hidden(memory, tokens, positions, blocked.repeat_interleave(self.cfg.heads, 0),
                              is_causal=False)
        return self.output(hidden[trie.owner, trie.slot])

    def _hidden(self, memory: Rows, tokens: torch.Tensor, positions: torch.Tensor,
                blocked: torch.Tensor, is_causal: bool) -> torch.Tensor:
        """tokens (N, L) at positions (L,) or (N, L), blocked (L, L) or (N x heads, L, L) True where
        a query may not attend -> the last layer's output (N, L, d_model). `is_causal` says whether
        `blocked` is the causal mask (said, not detected: detecting compares tensor values, which an
        exported graph cannot)."""
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model)
        # positions < L always (depth < slots in a trie): a table of L rows, sized from a shape, so
        # that an exported graph keeps its length dynamic
        table = sinusoidal_positions(positions.shape[-1], self.cfg.d_model, x.device)
        x = self.dropout(x + table[positions])
        return self.layers(x, memory["enc"], tgt_mask=blocked, memory_key_padding_mask=memory["pad"],
                           tgt_is_causal=is_causal)
