"""Batched beam search vs the plain per-utterance search, same model, same inputs, same N-best.

    python bench/beam_search.py [--utts 64 --beam 10 --threads 2] [--ctc-weight 0.3] [--device cuda]
        [--json out.json]

A random-weight pBLSTM + location-attention model (~10M parameters, the paper's family)
decodes `--utts` utterances of mixed length (2-15 s of random 80-dim features) three ways:
  plain       common.beam_search_reference: one utterance, one hypothesis per decoder call
  per-utt     the batched search called with one utterance at a time (beams batched)
  batched     the batched search over length-sorted batches of utterances x beams (ours,
              as `Transcriber` runs it)
and checks that all three return the same N-best, token for token.

With `--ctc-weight`, joint CTC-attention decoding (the model's CTC head, random like the rest):
the plain reference recomputes CTC prefix probabilities from scratch per hypothesis and is left
out; the ESPnet-style search is then the per-utterance search with the CTC prefix scorer's frame
loop (`LoopCTCPrefixScorer`, as ESPnet's CTCPrefixScoreTH), beside the per-utterance search and
the batched search with ours (closed form).

With `--device cuda` every search runs on the GPU (timed between synchronisations), and the
joint searches also count the CUDA kernels one decoder step launches (torch.profiler, one
batch): on a GPU a step costs roughly its launches, and the frame loop launches per frame.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from rich.console import Console
from rich.table import Table

from common.beam_search import BeamConfig, beam_search, length_sorted_batches
from common.beam_search_reference import LoopCTCPrefixScorer, reference_beam_search
from common.ctc_prefix import CTCPrefixScorer
from common.models import ModelConfig, Seq2Seq

MODEL = {
    "encoder": {"type": "pblstm", "hidden": 320, "layers": 4, "subsample": [1, 2, 2, 2], "proj": 320},
    "decoder": {"type": "lstm", "embed": 256, "hidden": 512, "layers": 1, "att_dim": 320,
                "att_conv_channels": 10, "att_conv_kernel": 31},
}
FRAME_RATE = 100  # feature frames per second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utts", type=int, default=64)
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--vocab", type=int, default=300)
    ap.add_argument("--max-len-ratio", type=float, default=0.3)
    ap.add_argument("--batch-size", type=int, default=8, help="utterances per batch (x beam rows)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ctc-weight", type=float, default=0.0, help="joint CTC decoding (0: attention only)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    clock = _Clock(device)

    model = Seq2Seq(ModelConfig.from_dict(MODEL), 80, args.vocab).eval()
    lens = torch.randint(2 * FRAME_RATE, 15 * FRAME_RATE, (args.utts,))
    feats = torch.randn(args.utts, int(lens.max()), 80)
    model, feats, lens = model.to(device), feats.to(device), lens.to(device)
    audio_s = float(lens.sum()) / FRAME_RATE
    cfg = BeamConfig(beam=args.beam, nbest=args.beam, max_len_ratio=args.max_len_ratio,
                     ctc_weight=args.ctc_weight)
    use_ctc = args.ctc_weight > 0

    with torch.no_grad():
        t0 = clock()
        enc, enc_lens = model.encode(feats, lens)
        encode_s = clock() - t0

        t0 = clock()
        batched: list = [None] * args.utts
        for idx in length_sorted_batches(enc_lens.tolist(), args.batch_size):
            rows = torch.tensor(idx)
            frames = int(enc_lens[rows].max())
            for i, hyps in zip(idx, beam_search(model, enc[rows, :frames], enc_lens[rows], cfg)):
                batched[i] = hyps
        batched_s = clock() - t0

        t0 = clock()
        per_utt = [beam_search(model, enc[i:i + 1, : enc_lens[i]], enc_lens[i:i + 1], cfg)[0]
                   for i in range(args.utts)]
        per_utt_s = clock() - t0

        t0 = clock()
        if use_ctc:   # the reference: ESPnet-style, per utterance, the CTC frame loop
            plain = [beam_search(model, enc[i:i + 1, : enc_lens[i]], enc_lens[i:i + 1], cfg,
                                 ctc_scorer=LoopCTCPrefixScorer)[0] for i in range(args.utts)]
        else:
            plain = [reference_beam_search(model, enc[i:i + 1], int(enc_lens[i]), cfg)
                     for i in range(args.utts)]
        plain_s = clock() - t0
        launches = _launches_per_step(model, enc, enc_lens, cfg) if use_ctc and device.type == "cuda" else None

    def same(a, b) -> bool:
        return all([h.tokens for h in x] == [h.tokens for h in y]
                   and all(abs(p.logp - q.logp) < 1e-4 for p, q in zip(x, y)) for x, y in zip(a, b))

    identical = same(batched, plain) and same(per_utt, plain)
    differing = [i for i in range(args.utts) if not same([batched[i]], [plain[i]])]
    gaps = [_tie_gap(plain[i], batched[i]) for i in differing]
    tokens = sum(len(h[0].tokens) + 1 for h in batched)
    rows = [("ESPnet-style: per utterance, CTC frame loop" if use_ctc else "plain (reference)", plain_s),
            ("per-utterance batched beams", per_utt_s), ("batched (ours)", batched_s)]
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": args.threads, "params": model.num_params(), "utts": args.utts,
        "beam": args.beam, "ctc_weight": args.ctc_weight, "audio_s": round(audio_s, 1),
        "encode_s": round(encode_s, 3),
        "best_tokens": tokens, "identical_nbest": identical, "batch_size": args.batch_size,
        "differing_utts": len(differing), "max_score_gap_where_differing": max(gaps, default=0.0),
        "methods": {name: {"search_s": round(s, 3), "utts_per_s": round(args.utts / s, 2),
                           "rtf": round(s / audio_s, 5)} for name, s in rows},
        "speedup": round(plain_s / batched_s, 2),
        "speedup_vs_per_utterance": round(per_utt_s / batched_s, 2),
    }
    if launches:
        result["cuda_kernels_per_step"] = launches
    table = Table(title=f"beam search, {model.num_params() / 1e6:.1f}M params, {args.utts} utts "
                        f"({audio_s:.0f} s audio), beam {args.beam}, CTC weight {args.ctc_weight}, "
                        f"{args.threads} threads, {result['device']}")
    for col in ["method", "search s", "utts/s", "RTF (search)", "speedup of ours"]:
        table.add_column(col, justify="right")
    for name, s in rows:
        table.add_row(name, f"{s:.2f}", f"{args.utts / s:.2f}", f"{s / audio_s:.4f}",
                      f"{s / batched_s:.1f}x")
    console = Console()
    console.print(table)
    console.print(f"identical N-best: {identical} ({len(differing)} of {args.utts} utterances differ; "
                  f"largest score gap between swapped hypotheses {max(gaps, default=0.0):.2e}); "
                  f"encoder (shared by all): {encode_s:.2f} s")
    if launches:
        console.print("CUDA kernels per decoder step (first batch): "
                      + ", ".join(f"{name} {n:.0f}" for name, n in launches.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


class _Clock:
    """perf_counter that first waits for the device's queued work, so GPU time is counted."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def _launches_per_step(model, enc, enc_lens, cfg: BeamConfig) -> dict[str, float]:
    """CUDA kernels launched per decoder step by one batch's search, per CTC prefix scorer."""
    from torch.profiler import ProfilerActivity, profile

    idx = length_sorted_batches(enc_lens.tolist(), 8)[-1]   # the longest utterances
    rows = torch.tensor(idx, device=enc.device)
    enc, enc_lens = enc[rows, : int(enc_lens[rows].max())], enc_lens[rows]
    out = {}
    for name, scorer in [("closed form (ours)", CTCPrefixScorer), ("frame loop", LoopCTCPrefixScorer)]:
        steps = 0
        step = model.decoder.step

        def counted(*a, **kw):
            nonlocal steps
            steps += 1
            return step(*a, **kw)

        model.decoder.step = counted
        try:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                beam_search(model, enc, enc_lens, cfg, ctc_scorer=scorer)
                torch.cuda.synchronize()
        finally:
            del model.decoder.step
        kernels = sum(1 for e in prof.events() if e.device_type.name == "CUDA")
        out[name] = round(kernels / max(steps, 1), 1)
    return out


def _tie_gap(want, got) -> float:
    """Score gap at the first rank where two N-best lists part: ~1e-6 means a float near-tie."""
    for a, b in zip(want, got):
        if a.tokens != b.tokens or abs(a.logp - b.logp) >= 1e-4:
            return abs(a.score - b.score)
    return 0.0


if __name__ == "__main__":
    main()
