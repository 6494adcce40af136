"""Row selection over nested decoder state: the one operation beam search needs on it.

Decoder states and encoder memories are dicts of tensors whose first dimension is the
row (utterance x beam); pruning and batch compaction both reduce to `select_rows`.
"""

from __future__ import annotations

from typing import Any

import torch

Rows = dict[str, Any]


def select_rows(tree: Any, index: torch.Tensor) -> Any:
    """Index dim 0 of every tensor in a dict / list / tuple tree."""
    if isinstance(tree, torch.Tensor):
        return tree.index_select(0, index)
    if isinstance(tree, dict):
        return {k: select_rows(v, index) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(select_rows(v, index) for v in tree)
    return tree


def lengths_to_mask(lens: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool mask, True on valid frames."""
    max_len = int(lens.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]
