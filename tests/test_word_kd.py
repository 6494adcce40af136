"""Word-level KD: the teacher's top-M kept by the beam search, the KL term against references,
and the paper's `--expand` protocol (each hypothesis its own example)."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
import torch

from common.beam_search import BeamConfig, beam_search
from common.kd import SoftTargets, sequence_kd_loss, soft_targets, word_kd_divergence
from common.models.seq2seq import IGNORE, decoder_io
from tests.conftest import FAMILIES, tiny_model
from trainer.data import SOFT_FEATURE_SCHEMA, bucketed, expanded
from trainer.distill import SequenceKD


def assert_top_m_matches(stored_ids: list[list[int]], stored_logp: list[list[float]],
                         reference: torch.Tensor, tol: float) -> None:
    """stored (positions x M) against the teacher-forced log-probs (positions, V): every stored
    token has the reference's log-prob, and no token left out beats the ones kept."""
    assert len(stored_ids) == reference.shape[0]
    for ids, lps, ref in zip(stored_ids, stored_logp, reference):
        assert len(set(ids)) == len(ids)
        assert torch.allclose(ref[ids], torch.tensor(lps), atol=tol, rtol=1e-3)
        left_out = ref.clone()
        left_out[ids] = float("-inf")
        assert float(left_out.max()) <= min(lps) + tol


def teacher_forced(model, feats: torch.Tensor, lens: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """One utterance, alone and unpadded: the decoder's log-probs along `tokens` + </s>, (L+1, V)."""
    enc, enc_lens = model.encode(feats, lens)
    ys_in, _ = decoder_io([tokens], enc.device)
    return torch.log_softmax(model.decoder(model.decoder.prepare(enc, enc_lens), ys_in), -1)[0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_beam_search_keeps_the_teachers_top_m_along_every_hypothesis(family):
    model = tiny_model(family)
    g = torch.Generator().manual_seed(5)
    feats, lens = torch.randn(3, 90, 40, generator=g), torch.tensor([90, 61, 75])
    cfg = BeamConfig(beam=4, nbest=4, ctc_weight=0.3, topm=6, max_len_ratio=0.3)
    with torch.no_grad():
        enc, enc_lens = model.encode(feats, lens)
        out = beam_search(model, enc, enc_lens, cfg)
        plain = beam_search(model, enc, enc_lens, BeamConfig(**{**cfg.__dict__, "topm": 0}))
        for u, hyps in enumerate(out):
            assert [h.tokens for h in hyps] == [h.tokens for h in plain[u]]   # keeping changes nothing
            for h in hyps:
                assert len(h.topm_ids) == len(h.tokens) + 1 and all(len(r) == 6 for r in h.topm_ids)
                ref = teacher_forced(model, feats[u:u + 1, : int(lens[u])], lens[u:u + 1], h.tokens)
                assert_top_m_matches(h.topm_ids, h.topm_logp, ref, tol=1e-4)
    assert all(h.topm_ids is None for hyps in plain for h in hyps)


def random_soft(n: int, length: int, m: int, vocab: int, seed: int) -> SoftTargets:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(vocab, generator=g)[:m] for _ in range(n * length)]).view(n, length, m)
    logp = torch.log_softmax(torch.randn(n, length, vocab, generator=g), -1).gather(-1, ids)
    return SoftTargets(ids, logp, torch.tensor([True] * (n - 1) + [False]), weight=0.7, temperature=2.0)


def test_word_kd_divergence_equals_a_direct_reference_and_its_gradient_is_analytic():
    n, length, m, vocab, t = 3, 5, 4, 11, 2.0
    soft = random_soft(n, length, m, vocab, seed=1)
    valid = torch.ones(n, length, dtype=torch.bool)
    valid[0, 3:] = False
    logits = torch.randn(n, length, vocab, requires_grad=True)
    fast = word_kd_divergence(logits, soft, valid)

    direct = []
    for i in range(n):
        total = torch.zeros(())
        for j in range(length):
            if not (valid[i, j] and soft.rows[i]):
                continue
            p = torch.softmax(soft.logp[i, j] / t, -1)          # the teacher's top M, renormalised
            q = torch.softmax(logits[i, j] / t, -1)[soft.ids[i, j]]
            total = total + t * t * sum(p[k] * torch.log(p[k] / q[k]) for k in range(m))
        direct.append(total)
    direct = torch.stack(direct)
    assert torch.allclose(fast, direct, atol=1e-5)
    assert float(fast[-1].detach()) == 0.0 and float(fast[0].detach()) > 0         # no teacher row; a real one

    weights = torch.randn(n)
    (grad,) = torch.autograd.grad((weights * fast).sum(), logits)
    (ref_grad,) = torch.autograd.grad((weights * direct).sum(), logits)
    assert torch.allclose(grad, ref_grad, atol=1e-5)
    # d/dz of T^2 KL = T (softmax(z / T) - p scattered onto the vocabulary), on valid positions
    p_full = torch.zeros(n, length, vocab).scatter(-1, soft.ids, torch.softmax(soft.logp / t, -1))
    analytic = t * (torch.softmax(logits.detach() / t, -1) - p_full)
    analytic *= (valid & soft.rows.unsqueeze(1)).unsqueeze(-1) * weights.view(n, 1, 1)
    assert torch.allclose(grad, analytic, atol=1e-5)


@pytest.mark.parametrize("family", ["pblstm-lstm", "conformer-transformer"])
def test_word_kd_in_the_kd_loss_is_the_weighted_kl_per_hypothesis(family):
    """loss(word_kd W) = (1 - w_ctc) ((1 - W) CE + W KL) + w_ctc CTC, with KL = sum_uk a_uk KL_uk / U
    and every KL_uk computed alone."""
    model = tiny_model(family).eval()
    g = torch.Generator().manual_seed(2)
    feats, lens = torch.randn(2, 80, 40, generator=g), torch.tensor([80, 57])
    hyps = [[[3, 4, 5], [3, 4]], [[6, 7, 8, 9]]]
    weights = [[0.75, 0.25], [1.0]]
    rows = [h for hs in hyps for h in hs]
    length = max(len(h) for h in rows) + 1
    per_row = []
    for h in rows:
        ids = torch.randint(0, 24, (len(h) + 1, 5), generator=g)
        per_row.append((ids.tolist(), torch.log_softmax(torch.randn(len(h) + 1, 5, generator=g), -1).tolist()))
    soft = soft_targets(per_row, length, weight=0.5, temperature=1.5, device=torch.device("cpu"))
    with torch.no_grad():
        plain = sequence_kd_loss(model, feats, lens, hyps, weights, [h[0] for h in hyps])
        with_kd = sequence_kd_loss(model, feats, lens, hyps, weights, [h[0] for h in hyps], soft)
        expected = 0.0
        owner = [0, 0, 1]
        for r, (h, a) in enumerate(zip(rows, [w for ws in weights for w in ws])):
            u = owner[r]
            enc, enc_lens = model.encode(feats[u:u + 1, : int(lens[u])], lens[u:u + 1])
            ys_in, ys_out = decoder_io([h], enc.device)
            logits = model.decoder(model.decoder.prepare(enc, enc_lens), ys_in)
            alone = soft_targets([per_row[r]], len(h) + 1, 0.5, 1.5, torch.device("cpu"))
            expected += a * float(word_kd_divergence(logits, alone, ys_out != IGNORE)[0])
    assert float(with_kd["kl"]) == pytest.approx(expected / 2, rel=1e-4)
    w = model.cfg.ctc_weight
    want = (1 - w) * (0.5 * float(plain["att"]) + 0.5 * expected / 2) + w * float(plain["ctc"])
    assert float(with_kd["loss"]) == pytest.approx(want, rel=1e-4)
    assert float(with_kd["att"]) == pytest.approx(float(plain["att"]), rel=1e-6)


@pytest.mark.parametrize("family", ["stacked-pblstm-lstm", "conformer-transformer"])
def test_frame_kd_interpolates_ctc_with_the_per_frame_kl(family):
    """CTC term = (1 - W) CTC + W mean_u sum_t KL_t, each utterance's KL computed alone and unpadded;
    a teacher whose frames are not the student's is refused."""
    model = tiny_model(family).eval()
    g = torch.Generator().manual_seed(4)
    feats, lens = torch.randn(2, 80, 40, generator=g), torch.tensor([80, 57])
    hyps, weights = [[[3, 4, 5]], [[6, 7]]], [[1.0], [1.0]]
    with torch.no_grad():
        enc, enc_lens = model.encode(feats, lens)
        rows = []
        for n in enc_lens.tolist():
            ids = torch.stack([torch.randperm(24, generator=g)[:5] for _ in range(n)])
            rows.append((ids.tolist(), torch.log_softmax(torch.randn(n, 5, generator=g), -1).tolist()))
        frames = soft_targets(rows, enc.shape[1], weight=0.3, temperature=1.0, device=torch.device("cpu"))
        plain = sequence_kd_loss(model, feats, lens, hyps, weights, [h[0] for h in hyps])
        kd = sequence_kd_loss(model, feats, lens, hyps, weights, [h[0] for h in hyps], ctc_soft=frames)
        alone = []
        for u, n in enumerate(enc_lens.tolist()):
            e, _ = model.encode(feats[u:u + 1, : int(lens[u])], lens[u:u + 1])
            one = soft_targets([rows[u]], n, 0.3, 1.0, torch.device("cpu"))
            alone.append(float(word_kd_divergence(model.ctc(e)[:, :n], one, torch.ones(1, n, dtype=torch.bool))))
        assert float(kd["frame_kl"]) == pytest.approx(sum(alone) / 2, rel=1e-4)
        assert float(kd["ctc"]) == pytest.approx(0.7 * float(plain["ctc"]) + 0.3 * sum(alone) / 2, rel=1e-4)
        assert float(kd["att"]) == pytest.approx(float(plain["att"]), rel=1e-6)
        short = SoftTargets(frames.ids[:, :-1], frames.logp[:, :-1], frames.rows, 0.3, 1.0)
        with pytest.raises(ValueError, match="teacher's frame rate"):
            sequence_kd_loss(model, feats, lens, hyps, weights, [h[0] for h in hyps], ctc_soft=short)


def kd_pool(prefix: str, n: int, seed: int) -> pa.Table:
    """Featurised KD rows with 1-3 hypotheses each; the top-M ids of hypothesis j are all j."""
    rng = random.Random(seed)
    rows = {name: [] for name in SOFT_FEATURE_SCHEMA.names}
    for i in range(n):
        frames, k = rng.randint(20, 60), rng.randint(1, 3)
        hyps = [[rng.randint(3, 9) for _ in range(rng.randint(1, 4))] for _ in range(k)]
        rows["utt_id"].append(f"{prefix}{i}")
        rows["text"].append("x")
        rows["feats"].append(torch.zeros(frames, 4).numpy().tobytes())
        rows["n_frames"].append(frames)
        rows["tokens"].append([3])
        rows["hyp_tokens"].append(hyps)
        rows["hyp_logp"].append([-1.0 * j for j in range(k)])
        rows["hyp_topm_ids"].append([[[j, j]] * (len(h) + 1) for j, h in enumerate(hyps)])
        rows["hyp_topm_logp"].append([[[-0.5, -1.0]] * (len(h) + 1) for h in hyps])
        rows["ctc_topm_ids"].append([[0, 3]] * (frames // 4))
        rows["ctc_topm_logp"].append([[-0.1, -2.5]] * (frames // 4))
    return pa.Table.from_pydict(rows, schema=SOFT_FEATURE_SCHEMA)


def test_expand_makes_every_hypothesis_its_own_example_once():
    pools = [kd_pool("a", 30, seed=3), kd_pool("b", 20, seed=4)]
    source = {u: hs for pool in pools for u, hs in zip(pool.column("utt_id").to_pylist(),
                                                      pool.column("hyp_tokens").to_pylist())}
    batches = list(expanded(iter(pools), 200, 4, random.Random(0)))
    seen = []
    for b in batches:
        assert len(set(b.utt_ids)) == len(b.utt_ids)                   # one hypothesis per utterance
        assert len({u[0] for u in b.utt_ids}) == 1                      # batches stay within a pool
        assert int(b.lens.max()) * len(b.utt_ids) <= 200
        for u, h, topm in zip(b.utt_ids, b.hyps, b.hyp_topm):
            assert len(h) == 1 and len(topm) == 1
            j = topm[0][0][0][0]                                        # hypothesis j of u
            assert source[u][j] == h[0] and len(topm[0][0]) == len(h[0]) + 1
            seen.append((u, j))
    assert sorted(seen) == sorted((u, j) for u, hs in source.items() for j in range(len(hs)))
    # each example trains alone: weight 1, its own top-M row
    hyps, weights, _, soft = SequenceKD(word_kd=1.0, expand=True).targets(batches[0])
    assert all(w == [1.0] for w in weights) and len(soft) == len(hyps)


def test_short_first_batches_run_from_shortest_to_longest_and_keep_every_example():
    """SortaGrad epochs (optim.short_first_epochs): no shuffle, each batch no shorter than the one
    before, the same examples as a shuffled epoch."""
    pool = pa.concat_tables([kd_pool("a", 30, seed=3), kd_pool("b", 20, seed=4)])
    for make in (bucketed, expanded):
        ordered = list(make(iter([pool]), 200, 4, None))
        longest = [int(b.lens.max()) for b in ordered]
        assert longest == sorted(longest) and longest[0] < longest[-1]
        shuffled = list(make(iter([pool]), 200, 4, random.Random(0)))
        assert [int(b.lens.max()) for b in shuffled] != longest           # the rng does shuffle
        def examples(batches: list) -> list:
            return sorted((u, str(h)) for b in batches for u, h in zip(b.utt_ids, b.hyps))
        assert examples(ordered) == examples(shuffled)
