"""The sequence-level KD loss against plain references: one encoder pass equals k full passes."""

from __future__ import annotations

import pytest
import torch

from common.kd import attention_loss, hypothesis_weights, model_loss, sequence_kd_loss
from common.models.seq2seq import decoder_io
from tests.conftest import FAMILIES, tiny_model


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([90, 61, 75])
    feats = torch.randn(3, 90, 40, generator=g)
    hyps = [[[3, 4, 5, 6], [3, 4, 7]], [[8, 9]], [[5, 5, 6, 7, 8], [5, 6], [9, 10, 11]]]
    return feats, lens, hyps


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_hypothesis_each_equals_the_ground_truth_loss(family):
    model = tiny_model(family)
    feats, lens, hyps = batch()
    targets = [h[0] for h in hyps]
    with torch.no_grad():
        kd = sequence_kd_loss(model, feats, lens, [[t] for t in targets], [[1.0]] * 3, targets)
        gt = model_loss(model, feats, lens, targets)
    assert float(kd["loss"]) == pytest.approx(float(gt.loss), rel=1e-5)
    assert float(kd["ctc"]) == pytest.approx(float(gt.ctc), rel=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_shared_encoder_equals_one_encoder_pass_per_hypothesis(family):
    """Reference: every hypothesis decoded against its own, separately computed encoder output."""
    model = tiny_model(family)
    feats, lens, hyps = batch(1)
    weights = [hypothesis_weights([-1.0 * (i + 1) for i in range(len(h))], "score", 2.0) for h in hyps]
    with torch.no_grad():
        kd = sequence_kd_loss(model, feats, lens, hyps, weights, [h[0] for h in hyps])
        total = 0.0
        for u, (hs, ws) in enumerate(zip(hyps, weights)):
            for tokens, w in zip(hs, ws):
                enc, enc_lens = model.encode(feats[u:u + 1, : int(lens[u])], lens[u:u + 1])
                ys_in, ys_out = decoder_io([tokens], enc.device)
                logits = model.decoder(model.decoder.prepare(enc, enc_lens), ys_in)
                total += w * float(attention_loss(logits, ys_out, model.cfg.label_smoothing))
    assert float(kd["att"]) == pytest.approx(total / len(hyps), rel=1e-4)


def test_gradients_reach_encoder_and_decoder_once():
    model = tiny_model("pblstm-lstm").train()
    feats, lens, hyps = batch(2)
    out = sequence_kd_loss(model, feats, lens, hyps, [hypothesis_weights([0.0] * len(h)) for h in hyps],
                           [h[0] for h in hyps])
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_hypothesis_weights():
    assert hypothesis_weights([-3.0, -1.0], "uniform") == [0.5, 0.5]
    w = hypothesis_weights([-1.0, -2.0, -3.0], "score", 1.0)
    assert sum(w) == pytest.approx(1.0) and w[0] > w[1] > w[2]
    assert w[0] / w[1] == pytest.approx(2.718281828, rel=1e-6)
    flat = hypothesis_weights([-1.0, -50.0], "score", 1e6)
    assert flat == pytest.approx([0.5, 0.5], abs=1e-4)
    with pytest.raises(ValueError, match="uniform' or 'score"):
        hypothesis_weights([0.0], "softmax")
    with pytest.raises(ValueError, match="at least one hypothesis"):
        sequence_kd_loss(tiny_model("pblstm-lstm"), *batch()[:2], [[[3]], [], [[4]]], [[1.0], [], [1.0]],
                         [[3], [3], [4]])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_loss_and_gradients_equal_the_weighted_sum_of_single_target_losses(family):
    """The slow way: one full forward (encoder included) per hypothesis, weighted a_uk / U."""
    feats, lens, hyps = batch(3)
    weights = [hypothesis_weights([-0.5 * i for i in range(len(h))], "score", 1.5) for h in hyps]
    ctc = [h[-1] for h in hyps]
    fast_model, slow_model = tiny_model(family).eval(), tiny_model(family).eval()
    slow_model.load_state_dict(fast_model.state_dict())

    fast = sequence_kd_loss(fast_model, feats, lens, hyps, weights, ctc)["loss"]
    fast.backward()
    slow = sum(w * model_loss(slow_model, feats[u:u + 1, : int(lens[u])], lens[u:u + 1], [tokens],
                              ctc_targets=[ctc[u]]).loss
               for u, (hs, ws) in enumerate(zip(hyps, weights)) for tokens, w in zip(hs, ws)) / len(hyps)
    slow.backward()

    assert fast.item() == pytest.approx(slow.item(), rel=1e-4)
    for (name, p), q in zip(fast_model.named_parameters(), slow_model.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-5), name
