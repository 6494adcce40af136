"""Prefix trie of teacher-forced decoder inputs: the k hypotheses of an utterance, merged.

Beam-search N-best lists share most of their prefixes (the 5-best of "pending reorganization"
differ in the last few characters). A decoder's output at a position depends only on the
utterance and the input prefix up to it (`</s>` as start symbol, then the tokens), so one
computation per unique (utterance, prefix) serves every hypothesis through it, with gradients
summed there: the losses and their gradients are those of decoding every row on its own.

Nodes are numbered level by level (depth 0 is `[</s>]`, one root per utterance), so a level is a
contiguous range whose parents all lie in the level above: a recurrent decoder steps once per
level over its unique nodes, gathering its parents' states by index. `path[r, i]` is the node of
row r's position i; the per-row logits (N, L, V) the unchanged losses read are gathered from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from common.tokenizer import SOS_ID


@dataclass(frozen=True)
class PrefixTrie:
    token: torch.Tensor    # (M,) the decoder input at each node
    owner: torch.Tensor    # (M,) its utterance
    parent: torch.Tensor   # (M,) its parent node, -1 for a root
    depth: torch.Tensor    # (M,) its position in every row through it
    slot: torch.Tensor     # (M,) its index among its utterance's nodes (in level order)
    starts: list[int]      # level d is nodes starts[d]:starts[d + 1]
    path: torch.Tensor     # (N, L) node of each row position, L = longest row + 1; 0 past a row's end

    @property
    def nodes(self) -> int:
        return self.starts[-1]

    def levels(self) -> Iterator[tuple[slice, torch.Tensor]]:
        """Per depth: its nodes and, for each, the index of its parent among the level above
        (for the roots the level above is the utterances, so the index is the utterance)."""
        for d in range(len(self.starts) - 1):
            level = slice(self.starts[d], self.starts[d + 1])
            yield level, self.owner[level] if d == 0 else self.parent[level] - self.starts[d - 1]

    def ancestors(self, utterances: int) -> torch.Tensor:
        """(B, S, S) bool, S = most nodes of one utterance: [u, i, j] is True where node slot j of
        utterance u is node slot i or an ancestor of it. An unused slot sees only itself (a row
        of attention with no key would be NaN, and NaN times a zero gradient is still NaN)."""
        width = int(self.slot.max()) + 1
        own = torch.zeros(self.nodes, width, dtype=torch.bool, device=self.slot.device)   # (M, S)
        for d in range(len(self.starts) - 1):
            level = slice(self.starts[d], self.starts[d + 1])
            if d:                                           # a root's only ancestor is itself
                own[level] = own[self.parent[level]]
            own[torch.arange(level.start, level.stop, device=own.device), self.slot[level]] = True
        mask = torch.eye(width, dtype=torch.bool, device=own.device).repeat(utterances, 1, 1)
        mask[self.owner, self.slot] = own
        return mask


def build_trie(targets: list[list[int]], owner: list[int], device: torch.device) -> PrefixTrie:
    """The decoder inputs `[</s>, *tokens]` of target rows (row r belongs to utterance owner[r])
    merged into their unique prefixes per utterance, numbered level by level."""
    inputs = [[SOS_ID, *t] for t in targets]
    length = max(map(len, inputs))
    index: dict[tuple[int, int, int], int] = {}       # (utterance, parent or -1, token) -> node
    token, owners, parent, depth, slot, starts = [], [], [], [], [], [0]
    count: dict[int, int] = {}                        # nodes so far per utterance
    path = [[0] * length for _ in inputs]
    last = [-1] * len(inputs)                         # each row's node at the previous depth
    for d in range(length):
        for r, seq in enumerate(inputs):
            if d >= len(seq):
                continue
            key = (owner[r], last[r], seq[d])
            node = index.get(key)
            if node is None:
                node = index[key] = len(token)
                token.append(seq[d])
                owners.append(owner[r])
                parent.append(last[r])
                depth.append(d)
                slot.append(count.get(owner[r], 0))
                count[owner[r]] = slot[-1] + 1
            path[r][d] = last[r] = node
        starts.append(len(token))
    token_t, owner_t, parent_t, depth_t, slot_t, path_t = (
        torch.tensor(xs, dtype=torch.long, device=device) for xs in (token, owners, parent, depth, slot, path))
    return PrefixTrie(token_t, owner_t, parent_t, depth_t, slot_t, starts, path_t)
