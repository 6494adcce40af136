"""`seqkd export BUNDLE --out DIR [--quantize int8]`: the model as ONNX graphs for ONNX Runtime."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="model bundle directory (or a run directory holding bundle/)")
    p.add_argument("--out", required=True, help="the exported directory to write (replaced if it exists)")
    p.add_argument("--quantize", choices=["int8"], help="int8 weights (ONNX Runtime dynamic quantization)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from common.bundle import BundleError, disk_bytes
    from common.export import export_bundle

    try:
        meta = export_bundle(args.bundle, args.out, args.quantize or "fp32")
    except BundleError as exc:
        print(f"seqkd export: {exc}", file=sys.stderr)
        return 2
    sizes, total = meta["sizes"], disk_bytes(Path(args.out))
    print(f"seqkd export: {args.out}: {meta['precision']} ONNX of bundle {meta['source_bundle_id']} "
          f"({meta['params']:,} params): encoder {sizes['encoder.onnx'] / 1e6:.2f} MB, decoder step "
          f"{sizes['decoder.onnx'] / 1e6:.2f} MB, {total / 1e6:.2f} MB on disk (the bundle: "
          f"{sizes['source_bundle'] / 1e6:.2f} MB, {sizes['source_bundle'] / total:.2f}x that)")
    return 0
