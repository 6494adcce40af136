"""CTC prefix scoring, closed form (ours) vs the frame-by-frame loop, in a real model's decode.

    python bench/ctc_prefix.py --bundle RUN_OR_EXPORT --data D/test [--limit 150] [--beam 5]
        [--ctc-weight 0.3] [--window M ...] [--concat K] [--threads 1] [--batch-size 16] [--json out.json]

One bundle (a PyTorch bundle or its ONNX export) decodes the first `--limit` utterances of a
manifest through the batched beam search with `common.ctc_prefix.CTCPrefixScorer` (the
forward variables of the kept rows by cumulative sums, no loop over frames), with
`common.beam_search_reference.LoopCTCPrefixScorer` (the same scorer with the recursion written
frame by frame, as before), and with `common.ctc_window`'s window of each `--window` margin.
Per way: decode seconds (features + encoder + search, the best of `--repeat`), the CTC prefix
scorer's share of it (cProfile, a separate run), the tensor operations one scoring step issues
(each one a kernel launch on a GPU), and the 1-best WER. The exact two must give the same N-best,
token for token; a window's WER is its cost (choose the margin on dev, report it on test).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.audio import load_audio  # noqa: E402
from common.beam_search import BeamConfig, beam_search, length_sorted_batches  # noqa: E402
from common.beam_search_reference import LoopCTCPrefixScorer  # noqa: E402
from common.corpora.manifest import iter_rows  # noqa: E402
from common.ctc_prefix import CTCPrefixScorer  # noqa: E402
from common.ctc_window import WindowedCTCPrefixScorer  # noqa: E402
from common.features import pad_features  # noqa: E402
from common.metrics import error_rates  # noqa: E402
from common.text import target_text  # noqa: E402
from common.transcriber import Transcriber  # noqa: E402

WAYS = {"closed form (ours)": CTCPrefixScorer, "frame loop (before)": LoopCTCPrefixScorer}
SCORER_FILES = ("ctc_prefix.py", "ctc_window.py", "beam_search_reference.py")


class _CountOps(TorchDispatchMode):
    """Counts the tensor operations run under it: on a GPU each is a kernel launch."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


class _CountingScorer:
    """Wraps a scorer class so that its score + select calls are counted per step."""

    def __init__(self, cls: type[CTCPrefixScorer], **kwargs) -> None:
        self.cls, self.kwargs, self.ops, self.steps = cls, kwargs, 0, 0

    def __call__(self, log_probs: torch.Tensor, lens: torch.Tensor) -> CTCPrefixScorer:
        outer = self

        class Counted(self.cls):   # type: ignore[misc, valid-type]
            def score(self, state, cand):
                with _CountOps() as ops:
                    out = super().score(state, cand)
                outer.ops += ops.count
                outer.steps += 1
                return out

            def select(self, ext, rows, cols, tokens, length):
                with _CountOps() as ops:
                    out = super().select(ext, rows, cols, tokens, length)
                outer.ops += ops.count
                return out

        return Counted(log_probs, lens, **self.kwargs)


def decode(transcriber: Transcriber, waves: list[torch.Tensor], cfg: BeamConfig, scorer, batch_size: int):
    """Features + encoder + batched search in length-sorted batches (as `Transcriber` runs it)."""
    out: list = [None] * len(waves)
    model = transcriber.bundle.model
    with torch.no_grad():
        for idx in length_sorted_batches([w.numel() for w in waves], batch_size):
            padded, lens = pad_features([transcriber.bundle.features(waves[i]) for i in idx])
            enc, enc_lens = model.encode(padded, lens)
            for i, hyps in zip(idx, beam_search(model, enc, enc_lens, cfg, ctc_scorer=scorer)):
                out[i] = hyps
    return out


def scorer_share(run) -> tuple[float, float]:
    """(seconds in the CTC prefix scorer, total seconds) of `run()` under cProfile."""
    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    stats = pstats.Stats(prof).stats
    total = max(ct for (_, _, name), (_, _, _, ct, _) in stats.items())
    inside = sum(ct for (file, _, name), (_, _, _, _, callers) in stats.items()
                 if file.endswith(SCORER_FILES) and name in ("score", "select")
                 for (caller, _, _), (_, _, _, ct) in callers.items()   # calls from outside only: a
                 if not caller.endswith(SCORER_FILES))                  # subclass's super() is inside
    return inside, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=150)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--ctc-weight", type=float, default=0.3)
    ap.add_argument("--window", type=int, nargs="*", default=[], metavar="M",
                    help="also decode with a CTC window of each margin (frames)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--concat", type=int, default=1, metavar="K",
                    help="decode every K consecutive utterances joined into one (long utterances)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    transcriber = Transcriber(args.bundle, device="cpu")
    rows = list(iter_rows(args.data, ["audio", "duration_s", "text"]))[: args.limit]
    waves = [load_audio(r["audio"]) for r in rows]
    audio_s = sum(r["duration_s"] for r in rows)
    if args.concat > 1:   # long utterances: every `concat` consecutive ones joined, texts too
        groups = range(0, len(rows), args.concat)
        waves = [torch.cat(waves[i:i + args.concat]) for i in groups]
        rows = [{"text": " ".join(r["text"] for r in rows[i:i + args.concat])} for i in groups]
    cfg = BeamConfig(beam=args.beam, nbest=args.beam, ctc_weight=args.ctc_weight)

    results, nbests = {}, {}
    ways = {name: (cfg, cls, {}) for name, cls in WAYS.items()}
    for m in args.window:
        ways[f"closed form, window {m}"] = (replace(cfg, ctc_window=m), WindowedCTCPrefixScorer, {"margin": m})
    refs = [target_text(r["text"], True) for r in rows]
    for name, (way_cfg, cls, kwargs) in ways.items():
        scorer = partial(cls, **kwargs)
        best = float("inf")
        for _ in range(args.repeat):
            began = time.perf_counter()
            nbests[name] = decode(transcriber, waves, way_cfg, scorer, args.batch_size)
            best = min(best, time.perf_counter() - began)
        inside, total = scorer_share(lambda: decode(transcriber, waves, way_cfg, scorer, args.batch_size))
        counted = _CountingScorer(cls, **kwargs)
        decode(transcriber, waves[: args.batch_size], way_cfg, counted, args.batch_size)
        hyps = [target_text(transcriber.bundle.tokenizer.decode(n[0].tokens), True) for n in nbests[name]]
        results[name] = {"decode_s": round(best, 3), "rtf": round(best / audio_s, 5),
                         "ctc_share": round(inside / total, 3),
                         "ops_per_step": round(counted.ops / max(counted.steps, 1), 1),
                         "wer": round(100 * error_rates(refs, hyps).wer, 2)}
    ours, loop = (nbests[n] for n in WAYS)
    identical = all([h.tokens for h in a] == [h.tokens for h in b] for a, b in zip(ours, loop))
    names = list(WAYS)
    speedup = results[names[1]]["decode_s"] / results[names[0]]["decode_s"]
    summary = {"bundle": str(args.bundle), "data": str(args.data), "utterances": len(waves),
               "audio_s": round(audio_s, 1), "concat": args.concat, "beam": args.beam, "ctc_weight": args.ctc_weight,
               "threads": args.threads, "batch_size": args.batch_size, "identical_nbest": identical,
               "ways": results, "decode_speedup": round(speedup, 2)}

    table = Table(title=f"CTC prefix scoring in a decode: {len(waves)} utts ({audio_s:.0f} s), "
                        f"beam {args.beam}, CTC weight {args.ctc_weight}, {args.threads} thread(s)")
    for col in ["way", "decode s", "RTF", "CTC prefix share", "tensor ops per step", "WER %"]:
        table.add_column(col, justify="right")
    for name, r in results.items():
        table.add_row(name, f"{r['decode_s']:.2f}", f"{r['rtf']:.4f}", f"{100 * r['ctc_share']:.0f}%",
                      f"{r['ops_per_step']:.0f}", f"{r['wer']:.2f}")
    console = Console()
    console.print(table)
    console.print(f"identical N-best: {identical}; decode {speedup:.2f}x faster")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
