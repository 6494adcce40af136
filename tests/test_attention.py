"""Location-aware attention: the fused location term (windows x one (K, A) matrix) against the
paper's form, a Conv1d over the previous alignment followed by its projection."""

from __future__ import annotations

import pytest
import torch

from common.models.attention import LocationAwareAttention


def reference(att: LocationAwareAttention, enc: torch.Tensor, mask: torch.Tensor, query: torch.Tensor,
              prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The equations as written: e = w . tanh(W h + V s + U (F * a_prev) + b), the conv by nn.Conv1d."""
    loc = att.loc_conv(prev.unsqueeze(1)).transpose(1, 2)                          # (N, T, C)
    hidden = torch.tanh(att.enc_proj(enc) + att.loc_proj(loc) + att.dec_proj(query).unsqueeze(1))
    energy = att.score(hidden).squeeze(-1).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(att.sharpening * energy, dim=-1)
    return torch.bmm(weights.unsqueeze(1), enc).squeeze(1), weights


@pytest.mark.parametrize("kernel,channels", [(15, 4), (31, 10), (1, 3)])
def test_fused_location_term_equals_conv1d_with_gradients(kernel, channels):
    torch.manual_seed(kernel)
    att = LocationAwareAttention(12, 10, 8, channels, kernel).double()
    lens = torch.tensor([20, 7, 13])
    enc = torch.randn(3, 20, 12, dtype=torch.float64, requires_grad=True)
    mask = torch.arange(20)[None, :] < lens[:, None]
    query = torch.randn(3, 10, dtype=torch.float64, requires_grad=True)
    prev = torch.softmax(torch.randn(3, 20, dtype=torch.float64).masked_fill(~mask, float("-inf")), -1)
    prev.requires_grad_()
    inputs = [enc, query, prev, *att.parameters()]
    outs, grads = [], []
    for fn in (lambda: att(enc, att.project(enc), mask, query, prev), lambda: reference(att, enc, mask, query, prev)):
        context, weights = fn()
        probe = (context * torch.linspace(-1, 1, context.numel(), dtype=torch.float64).view_as(context)).sum() \
            + (weights.square() * torch.arange(weights.shape[1], dtype=torch.float64)).sum()
        outs.append((context, weights))
        grads.append(torch.autograd.grad(probe, inputs))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)
    assert all(g.abs().sum() > 0 for g in grads[1])       # every input reaches the output
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-11)
