"""`seqkd export`: a bundle as two ONNX graphs, optionally int8, for ONNX Runtime (no PyTorch).

The graphs cut the model where the beam search already calls it (docs/DESIGN.md, "Model
interface"), so `common.onnx_model` can put ONNX Runtime behind that interface and the one beam
search drives both:

  encoder.onnx  feats (B, T, F) float32, lens (B,) int64
                -> enc_lens (B,), ctc_logp (B, T', V), memory.<name> (B, T', ·) for each tensor of
                   the decoder's `frame_memory` (computed once per utterance, not per beam row)
  decoder.onnx  tokens (N,) int64, state.<name> ..., memory.<name> ... (N = utterances x beam)
                -> logp (N, V), next.<name> ... (one step; the Transformer's state is its prefix)

Every batch, row, frame and prefix axis is dynamic. int8 is ONNX Runtime's dynamic quantization
(weights int8 per tensor, activations quantized per call) of the graphs' matrix products,
LSTMs and embeddings. The export is checked against PyTorch on inputs of other sizes than those
it was traced with, so a graph that baked in a shape fails here, not in a user's decode.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.export import Dim

from common.bundle import (EXPORT_FORMAT, EXPORT_ID_FILES, EXPORT_VERSION, BundleError, atomic_dir,
                           disk_bytes, file_sha256, files_id, find_bundle, load_bundle)
from common.models import Seq2Seq
from common.models.rows import Rows
from common.onnx_model import session
from common.tokenizer import SOS_ID

OPSET = 18
PRECISIONS = ("fp32", "int8")
CHECK_TOLERANCE = 1e-3            # fp32 graphs vs PyTorch, max abs difference of log-probs
QUANTIZED_OPS = ["MatMul", "LSTM", "Gather"]   # not Conv: ONNX Runtime has no int8-weight ConvInteger


class EncoderGraph(nn.Module):
    """The encoder, its CTC head and the decoder's per-frame memory, as one graph."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats, lens = inputs                                                  # (B, T, F), (B,)
        enc, enc_lens = self.model.encode(feats, lens)                        # (B, T', D), (B,)
        frames = self.model.decoder.frame_memory(enc)                         # name -> (B, T', ·)
        return (enc_lens, self.model.ctc_log_probs(enc), *frames.values())


class StepGraph(nn.Module):
    """One decoder step with its state and memory as flat named tensors."""

    def __init__(self, model: Seq2Seq, state: list[str], memory: list[str]) -> None:
        super().__init__()
        self.decoder, self.state, self.memory = model.decoder, state, memory

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens, tensors = inputs[0], inputs[1:]                               # (N,), state + memory
        state = dict(zip(self.state, tensors[: len(self.state)]))
        memory = dict(zip(self.memory, tensors[len(self.state):]))
        logp, after = self.decoder.step(tokens, state, memory)               # (N, V), state
        return (logp, *(after[k] for k in self.state))


def export_bundle(source: str | Path, out: str | Path, precision: str = "fp32") -> dict[str, Any]:
    """Export the bundle (or run directory) `source` into `out` (written atomically); its meta."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    source, out = find_bundle(source), Path(out)
    bundle = load_bundle(source)
    model = bundle.model.float().eval()
    with atomic_dir(out) as tmp:
        graphs = _export_graphs(model, tmp, bundle.features.config.n_mels)
        _check(model, tmp, graphs, bundle.features.config.n_mels)
        if precision == "int8":
            _quantize(tmp)
        for name in ("config.yaml", "tokenizer.model", "cmvn.safetensors"):
            shutil.copyfile(source / name, tmp / name)
        meta = {**{k: v for k, v in bundle.meta.items() if k != "bundle_id"},
                "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "precision": precision,
                "bundle_id": files_id(tmp, EXPORT_ID_FILES), "source_bundle_id": bundle.bundle_id,
                "opset": OPSET, "graphs": graphs,
                "files": {name: file_sha256(tmp / name) for name in EXPORT_ID_FILES},
                "sizes": {**{name: (tmp / name).stat().st_size for name in EXPORT_ID_FILES},
                          "source_bundle": disk_bytes(source)}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def _example(model: Seq2Seq, feat_dim: int, lengths: list[int], beam: int, steps: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Rows, Rows, Rows]:
    """Random (seeded) features of `lengths` frames, and the decoder's inputs after `steps` steps
    over `beam` rows per utterance: (feats, lens, tokens, state, memory, frame memory)."""
    feats = torch.randn(len(lengths), max(lengths), feat_dim, generator=torch.Generator().manual_seed(0))
    lens = torch.tensor(lengths)
    with torch.no_grad():
        enc, enc_lens = model.encode(feats, lens)
        frames = model.decoder.frame_memory(enc)
        rows = torch.arange(len(lengths)).repeat_interleave(beam)
        memory = model.decoder.prepare(enc.index_select(0, rows), enc_lens.index_select(0, rows))
        state = model.decoder.init_state(memory)
        tokens = torch.full((rows.numel(),), SOS_ID, dtype=torch.long)
        for _ in range(steps):
            logp, state = model.decoder.step(tokens, state, memory)
            tokens = logp.argmax(1)
    return feats, lens, tokens, state, memory, frames


def _export_graphs(model: Seq2Seq, where: Path, feat_dim: int) -> dict[str, Any]:
    """Trace both graphs into `where`; the names of the decoder's state and memory tensors and
    the widths of the per-frame memory (the contract `common.onnx_model` reads)."""
    feats, lens, tokens, state, memory, frames = _example(model, feat_dim, [160, 123], beam=3, steps=2)
    frame_names = [f"memory.{k}" for k in frames]
    time_axes = type(model.decoder).STATE_TIME_AXES   # e.g. the attention weights' frames
    batch, rows = {0: "batch"}, {0: "rows"}
    _export_graph(EncoderGraph(model), (feats, lens), where / "encoder.onnx", ["feats", "lens"],
                  ["enc_lens", "ctc_logp", *frame_names],
                  {"feats": {0: "batch", 1: "frames"}, "lens": batch, "enc_lens": batch,
                   **{n: {0: "batch", 1: "enc_frames"} for n in ["ctc_logp", *frame_names]}})
    axes = {"tokens": rows, "logp": rows,
            **{f"memory.{k}": {0: "rows", 1: "enc_frames"} if v.dim() > 1 else rows for k, v in memory.items()},
            **{f"state.{k}": {**rows, **time_axes.get(k, {})} for k in state},
            **{f"next.{k}": {**rows, **{a: f"next_{n}" for a, n in time_axes.get(k, {}).items()}} for k in state}}
    _export_graph(StepGraph(model, list(state), list(memory)), (tokens, *state.values(), *memory.values()),
                  where / "decoder.onnx",
                  ["tokens", *(f"state.{k}" for k in state), *(f"memory.{k}" for k in memory)],
                  ["logp", *(f"next.{k}" for k in state)], axes)
    return {"state": list(state), "memory": list(memory),
            "frame_memory": [[k, int(v.shape[-1])] for k, v in frames.items()]}


def _export_graph(graph: nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str],
                  outputs: list[str], axes: dict[str, dict[int, str]]) -> None:
    """One graph, `axes` dynamic. Graphs with attention layers go through torch.export (the
    TorchScript exporter of torch 2.14 turns nn.MultiheadAttention's sequence length into a
    constant); the others through the TorchScript exporter, which maps nn.LSTM onto ONNX's LSTM
    op in seconds (torch.export takes about ten times longer on the pBLSTM)."""
    attention = any(isinstance(m, nn.MultiheadAttention) for m in graph.modules())
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with _quiet(), torch.no_grad():
        torch.backends.mha.set_fastpath_enabled(False)   # the fused attention kernel has no ONNX form
        try:
            if attention:
                shapes = tuple({axis: Dim.AUTO for axis in axes.get(name, {})} for name in inputs)
                torch.onnx.export(graph, args, str(path), dynamo=True, opset_version=OPSET,
                                  input_names=inputs, output_names=outputs, dynamic_shapes=(shapes,),
                                  external_data=False, verbose=False)
            else:
                torch.onnx.export(graph, args, str(path), dynamo=False, opset_version=OPSET,
                                  input_names=inputs, output_names=outputs, dynamic_axes=axes)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    model = onnx.load(str(path))
    for node in model.graph.node:     # torch.export's per-node notes (stack traces, local paths):
        del node.metadata_props[:]    # most of a small model's file, and nothing to ship
    onnx.save(model, str(path))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' and quantizer's notes (deprecations, tracer warnings, progress lines,
    optional packages they skip; the quantizer logs to the root logger) are not for the user of
    `seqkd export`."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.__trace", "onnxscript", "onnx_ir", None)]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _check(model: Seq2Seq, where: Path, graphs: dict[str, Any], feat_dim: int) -> None:
    """The fp32 graphs against PyTorch on other sizes than the traced ones (batch, frames, rows;
    the first step's empty state and a later one): a shape baked into a graph shows up here."""
    encoder, decoder = session(where / "encoder.onnx", 1), session(where / "decoder.onnx", 1)
    step = StepGraph(model, graphs["state"], graphs["memory"])
    for steps in (0, 3):
        feats, lens, tokens, state, memory, _ = _example(model, feat_dim, [97, 211, 150], beam=2, steps=steps)
        feeds = {"tokens": tokens, **{f"state.{k}": v for k, v in state.items()},
                 **{f"memory.{k}": v for k, v in memory.items()}}
        with torch.no_grad():
            pairs = [("encoder", encoder.run(None, {"feats": feats.numpy(), "lens": lens.numpy()}),
                      EncoderGraph(model)(feats, lens)),
                     (f"decoder step {steps + 1}",
                      decoder.run(None, {i.name: feeds[i.name].numpy() for i in decoder.get_inputs()}),
                      step(tokens, *state.values(), *memory.values()))]
        for name, got, want in pairs:
            for x, y in zip(got, want):
                x = torch.from_numpy(x)
                if x.shape != y.shape or float((x.double() - y.double()).abs().max()) > CHECK_TOLERANCE:
                    raise BundleError(f"export check failed: the {name} graph differs from PyTorch "
                                      f"({tuple(x.shape)} vs {tuple(y.shape)}); please report this model's config")


def _quantize(where: Path) -> None:
    """Both graphs to int8 weights in place (ONNX Runtime's dynamic quantization)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in ("encoder.onnx", "decoder.onnx"):
        fp32 = where / f"{name}.fp32"
        options = ort.SessionOptions()     # constant folding first, so that weights the graph splits
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC   # (attention's
        options.optimized_model_filepath = str(fp32)                    # packed q/k/v) become plain ones
        ort.InferenceSession(str(where / name), options, providers=["CPUExecutionProvider"])
        _gemms_as_matmuls(fp32)
        with _quiet():
            quantize_dynamic(fp32, where / name, weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS)
        fp32.unlink()


def _gemms_as_matmuls(path: Path) -> None:
    """Rewrite each Gemm whose weight is a constant used by it alone as MatMul (+ Add): a Linear
    over (N, D) rows exports as Gemm, which ONNX Runtime's dynamic quantization leaves in fp32
    (the LSTM decoder's cells, attention and output layer: most of its weights)."""
    model = onnx.load(str(path))
    weights = {w.name: w for w in model.graph.initializer}
    uses = Counter(i for node in model.graph.node for i in node.input)
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in weights or uses[node.input[1]] != 1
                or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        if attrs.get("transB", 0):                       # (out, in) -> (in, out), same name
            w = onnx.numpy_helper.to_array(weights[node.input[1]])
            weights[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(w.T), node.input[1]))
        biased = len(node.input) > 2 and bool(node.input[2])
        product = f"{node.output[0]}.matmul" if biased else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", node.input[:2], [product], name=f"{node.name}.matmul"))
        if biased:
            nodes.append(onnx.helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                               name=f"{node.name}.bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))
