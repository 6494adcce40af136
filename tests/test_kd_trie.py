"""Prefix-shared teacher forcing: the trie of an utterance's hypotheses, and the KD loss over it
equal (loss and every parameter's gradient) to decoding each hypothesis as its own row."""

from __future__ import annotations

import random

import pytest
import torch

from common.beam_search import BeamConfig, beam_search
from common.kd import hypothesis_weights, sequence_kd_loss, soft_targets
from common.models.trie import build_trie
from common.tokenizer import SOS_ID
from tests.conftest import tiny_model

CPU = torch.device("cpu")
FAMILIES = ["pblstm-lstm", "conformer-transformer"]


def check_paths(targets: list[list[int]], owner: list[int]) -> None:
    """Every row position's node holds that position's input, depth, utterance and parent; nodes
    come level by level, and no two nodes are the same (utterance, prefix)."""
    trie = build_trie(targets, owner, CPU)
    prefixes = set()
    for r, (tokens, u) in enumerate(zip(targets, owner)):
        seq = [SOS_ID, *tokens]
        for i in range(len(seq)):
            node = int(trie.path[r, i])
            assert int(trie.token[node]) == seq[i] and int(trie.depth[node]) == i
            assert int(trie.owner[node]) == u
            assert int(trie.parent[node]) == (int(trie.path[r, i - 1]) if i else -1)
            prefixes.add((u, tuple(seq[: i + 1])))
    assert trie.nodes == len(prefixes)
    assert trie.depth.tolist() == sorted(trie.depth.tolist())
    assert trie.starts == [int((trie.depth < d).sum()) for d in range(len(trie.starts))]


def test_trie_merges_shared_prefixes_per_utterance():
    targets = [[3, 4, 5], [3, 4, 6], [3, 4], [3, 4, 5], [], [3, 4, 5]]
    owner = [0, 0, 0, 0, 0, 1]
    trie = build_trie(targets, owner, CPU)
    # utterance 0: [</s>], 3, 3 4, 3 4 5, 3 4 6; utterance 1 shares nothing with it: 4 more
    assert trie.nodes == 9 and trie.starts == [0, 2, 4, 6, 9]
    assert trie.path[0].tolist() == trie.path[3].tolist()                 # identical hypotheses
    assert trie.path[2, :3].tolist() == trie.path[0, :3].tolist()         # [3 4] is a prefix of [3 4 5]
    assert trie.path[0, 3] != trie.path[1, 3]
    assert trie.path[4, 0] == trie.path[0, 0]                             # the empty hypothesis: the root
    assert trie.path[5, 0] != trie.path[0, 0]
    check_paths(targets, owner)


def test_one_hypothesis_each_is_the_flat_layout():
    targets = [[3, 4, 5], [3, 4, 5], [6]]
    trie = build_trie(targets, [0, 1, 2], CPU)
    assert trie.nodes == sum(len(t) + 1 for t in targets)
    assert trie.slot.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    check_paths(targets, [0, 1, 2])


@pytest.mark.parametrize("seed", range(5))
def test_random_tries_hold_every_path(seed):
    targets, owner = [], []
    rng = random.Random(seed)
    for u in range(4):
        for _ in range(rng.randint(1, 6)):
            targets.append([rng.randint(3, 5) for _ in range(rng.randint(0, 6))])
            owner.append(u)
    check_paths(targets, owner)


def test_ancestor_mask_of_each_node_is_its_path():
    targets, owner = [[3, 4, 5], [3, 6], [7, 4]], [0, 0, 1]
    trie = build_trie(targets, owner, CPU)
    mask = trie.ancestors(3)                                              # utterance 2 has no nodes
    assert mask.shape == (3, 5, 5)
    for r, u in enumerate(owner):
        for i in range(len(targets[r]) + 1):
            node = trie.path[r, i]
            seen = {int(trie.slot[trie.path[r, j]]) for j in range(i + 1)}
            assert set(mask[u, trie.slot[node]].nonzero().flatten().tolist()) == seen
    assert torch.equal(mask[1, 3:], torch.eye(5, dtype=torch.bool)[3:])   # unused slots: themselves
    assert torch.equal(mask[2], torch.eye(5, dtype=torch.bool))


def random_nbest(seed: int) -> list[list[list[int]]]:
    """Random hypotheses over 3 tokens: chance prefixes, duplicates, empty ones, k from 1 to 5."""
    rng = random.Random(seed)
    return [[[rng.randint(3, 5) for _ in range(rng.randint(0, 7))] for _ in range(k)] for k in (1, 5, 3)]


def realistic_nbest(seed: int) -> list[list[list[int]]]:
    """Like a beam's 5-best: one long 1-best and variants in its last tokens (one a prefix of it)."""
    rng = random.Random(seed)
    out = []
    for length in (14, 9, 11):
        best = [rng.randint(3, 23) for _ in range(length)]
        out.append([best, best[:-1] + [rng.randint(3, 23)], best[:-2] + [rng.randint(3, 23)] * 2,
                    best[:-1], best[:-3] + [rng.randint(3, 23)]])
    return out


def batch(hyps: list[list[list[int]]], dtype: torch.dtype, word_kd: bool = True, seed: int = 0):
    """Features, score weights, a transcript row on utterance 0 (no teacher distributions), and
    random teacher top-M along every other row when `word_kd`."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([90, 61, 75])
    feats = torch.randn(3, 90, 40, generator=g).to(dtype)
    hyps = [[*hyps[0], [4, 5, 6]], *hyps[1:]]
    weights = [hypothesis_weights([-0.7 * i for i in range(len(h))], "score", 1.3) for h in hyps]
    rows = [t for h in hyps for t in h]
    soft = None
    if word_kd:
        per_row = [(torch.randint(0, 24, (len(t) + 1, 4), generator=g).tolist(),
                    torch.log_softmax(torch.randn(len(t) + 1, 4, generator=g), -1).tolist()) for t in rows]
        per_row[len(hyps[0]) - 1] = None                                    # the transcript row
        soft = soft_targets(per_row, max(map(len, rows)) + 1, weight=0.4, temperature=1.5, device=CPU)
    return feats, lens, hyps, weights, soft


def loss_and_grads(family: str, data, share: bool, dtype: torch.dtype):
    feats, lens, hyps, weights, soft = data
    model = tiny_model(family).to(dtype)
    out = sequence_kd_loss(model, feats, lens, hyps, weights, [h[0] for h in hyps], soft,
                           share_prefixes=share)
    out["loss"].backward()
    return out, {name: p.grad for name, p in model.named_parameters()}


def assert_same(family: str, data, dtype: torch.dtype, tol: float, grad_tol: float) -> None:
    """Loss terms within `tol` relative; each gradient within `grad_tol` of the largest gradient
    entry (some are sums that cancel to ~0, e.g. the attention score's bias, whose true gradient
    is 0: softmax ignores a shift, so only rounding is left there)."""
    flat, flat_grads = loss_and_grads(family, data, False, dtype)
    trie, trie_grads = loss_and_grads(family, data, True, dtype)
    for term in ("loss", "att", "ctc", "kl"):
        assert float(trie[term].detach()) == pytest.approx(float(flat[term].detach()), rel=tol, abs=1e-12), term
    if data[-1] is not None:
        assert float(flat["kl"]) > 0
    scale = max(float(g.abs().max()) for g in flat_grads.values())
    for name, g in flat_grads.items():
        assert trie_grads[name] is not None, name
        assert float((trie_grads[name] - g).abs().max()) <= grad_tol * scale, name


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("nbest", [random_nbest, realistic_nbest])
def test_trie_loss_and_gradients_equal_the_flat_rows(family, nbest):
    """Label-smoothed CE, word-level KD and CTC; float64 weights, so what is left is rounding
    (the losses themselves are float32 sums; about 1e-16 of the largest gradient was seen)."""
    assert_same(family, batch(nbest(1), torch.float64), torch.float64, 1e-7, 1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_trie_equals_flat_in_float32(family):
    assert_same(family, batch(realistic_nbest(2), torch.float32), torch.float32, 1e-5, 1e-5)


def test_prefixes_are_shared_by_default_on_cpu_and_an_explicit_choice_wins():
    """The default follows the device (the trie on CPU, flat rows on a GPU, where the trie's
    per-level gathers cost more launches than the rows they save); asked for, either path runs."""
    feats, lens, hyps, weights, _ = batch(realistic_nbest(3), torch.float32)
    model, seen = tiny_model("pblstm-lstm"), []
    forward = model.forward
    model.forward = lambda *a, **kw: seen.append(kw["share_prefixes"]) or forward(*a, **kw)
    for share in (None, False, True):
        sequence_kd_loss(model, feats, lens, hyps, weights, [h[0] for h in hyps], share_prefixes=share)
    assert seen == [True, False, True]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_position_gets_the_logits_of_its_own_row(family):
    """Per-row logits gathered from the trie equal the flat rows' at every position; node logits
    are pairwise distinct, so a node gathered in place of another could not pass."""
    model = tiny_model(family)
    feats, lens, hyps, _, _ = batch(realistic_nbest(3), torch.float32, False)
    targets = [t for h in hyps for t in h]
    owner = [u for u, h in enumerate(hyps) for _ in h]
    with torch.no_grad():
        enc, enc_lens = model.encode(feats, lens)
        flat = model.teacher_forced(enc, enc_lens, targets, owner)
        shared = model.teacher_forced(enc, enc_lens, targets, owner, share_prefixes=True)
        trie = build_trie(targets, owner, CPU)
        nodes = model.decoder.forward_trie(model.decoder.prepare(enc, enc_lens), trie)
    for r, t in enumerate(targets):
        assert torch.allclose(shared[r, : len(t) + 1], flat[r, : len(t) + 1], rtol=1e-5, atol=1e-5)
    gaps = torch.cdist(nodes, nodes) + torch.eye(trie.nodes) * 1e9
    assert float(gaps.min()) > 1e-3
    assert trie.nodes < len(trie.path.flatten())


@pytest.mark.parametrize("family", FAMILIES)
def test_trie_on_a_beam_search_nbest_with_its_top_m(family):
    """The labeling path's own N-best and top-M (a random teacher), word-level KD on."""
    model = tiny_model(family, seed=1)
    g = torch.Generator().manual_seed(7)
    feats, lens = torch.randn(3, 90, 40, generator=g), torch.tensor([90, 61, 75])
    with torch.no_grad():
        enc, enc_lens = model.encode(feats, lens)
        out = beam_search(model, enc, enc_lens, BeamConfig(beam=5, nbest=5, topm=4, max_len_ratio=0.4))
    hyps = [[h.tokens for h in u] for u in out]
    rows = [(h.topm_ids, h.topm_logp) for u in out for h in u]
    length = max(len(t) for h in hyps for t in h) + 1
    soft = soft_targets(rows, length, weight=0.5, temperature=2.0, device=CPU)
    weights = [hypothesis_weights([h.logp for h in u], "score", 1.0) for u in out]
    data = (feats.double(), lens, hyps, weights, soft)
    assert_same(family, data, torch.float64, 1e-7, 1e-12)
