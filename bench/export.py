"""PyTorch fp32 vs ONNX fp32 vs ONNX int8 of one bundle: size on disk, CPU RTF at 1 and 2 threads,
WER on a test manifest.

    python bench/export.py --bundle demo_out/runs/student_small_kd --test demo_out/data/test \
        [--work bench_exports] [--threads 1 2] [--beam 5 --ctc-weight 0.3] [--repeat 2] [--json out.json]

The bundle is exported into --work as fp32 and int8 (reused while the source bundle is the same).
Every form decodes the same utterances with the same beam settings on the CPU through the one
beam search (`Transcriber`: features + encoder + batched search); RTF = decode seconds / audio
seconds, the best of --repeat runs (the first run of a form pays one-time start-up costs).
ONNX Runtime gets as many threads as torch (`--threads`), so the thread counts compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import onnxruntime
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.beam_search import BeamConfig  # noqa: E402
from common.bundle import bundle_id, disk_bytes, find_bundle  # noqa: E402
from common.export import export_bundle  # noqa: E402
from scoring.evaluate import evaluate  # noqa: E402


def exported(bundle: Path, out: Path, precision: str) -> Path:
    """`out` holding the export of `bundle` at `precision`, exported now unless it already does."""
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    if (meta.get("source_bundle_id"), meta.get("precision")) != (bundle_id(bundle), precision):
        export_bundle(bundle, out, precision)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, help="bundle or run directory")
    ap.add_argument("--test", required=True, help="test manifest directory")
    ap.add_argument("--work", default="bench_exports", help="where the exports are written")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--ctc-weight", type=float, default=0.3)
    ap.add_argument("--ctc-window", type=int, default=0, help="CTC window margin in frames (0: exact)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    bundle = find_bundle(args.bundle)
    work = Path(args.work) / bundle_id(bundle)
    forms = {"pytorch fp32": bundle, "onnx fp32": exported(bundle, work / "fp32", "fp32"),
             "onnx int8": exported(bundle, work / "int8", "int8")}
    cfg = BeamConfig(beam=args.beam, ctc_weight=args.ctc_weight, ctc_window=args.ctc_window)
    rows = []
    for form, path in forms.items():
        row = {"form": form, "path": str(path), "mb": disk_bytes(path) / 1e6, "rtf": {}}
        for threads in args.threads:
            torch.set_num_threads(threads)
            runs = [evaluate(path, args.test, cfg, device="cpu", show_progress=False)
                    for _ in range(args.repeat)]
            row["rtf"][threads] = min(r.rtf for r in runs)
            row.update(wer=runs[0].rates.wer, cer=runs[0].rates.cer, utterances=runs[0].utterances,
                       audio_s=runs[0].audio_s)
        rows.append(row)
        print(f"{form}: {row['mb']:.3f} MB, WER {100 * row['wer']:.2f}%, RTF "
              + ", ".join(f"{r:.4f} ({t} thr)" for t, r in row["rtf"].items()), flush=True)
    base = rows[0]
    for row in rows:
        row["smaller"] = base["mb"] / row["mb"]
        row["speedup"] = {t: base["rtf"][t] / row["rtf"][t] for t in args.threads}
        row["wer_diff"] = row["wer"] - base["wer"]

    table = Table(title=f"{bundle} on {args.test} ({base['utterances']} utts, {base['audio_s']:.0f} s), "
                        f"beam {args.beam}, CTC weight {args.ctc_weight}, CPU")
    for head in ["form", "MB", "smaller", *(f"RTF {t} thr" for t in args.threads),
                 *(f"speed-up {t} thr" for t in args.threads), "WER %", "WER diff"]:
        table.add_column(head, justify="left" if head == "form" else "right")
    for row in rows:
        table.add_row(row["form"], f"{row['mb']:.3f}", f"{row['smaller']:.2f}x",
                      *(f"{row['rtf'][t]:.4f}" for t in args.threads),
                      *(f"{row['speedup'][t]:.2f}x" for t in args.threads),
                      f"{100 * row['wer']:.2f}", f"{100 * row['wer_diff']:+.2f}")
    Console(width=160).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "bundle": str(bundle), "test": args.test, "beam": args.beam, "ctc_weight": args.ctc_weight,
            "ctc_window": args.ctc_window,
            "repeat": args.repeat, "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                                               "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
            "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
