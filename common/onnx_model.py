"""ONNX Runtime behind the model interface the beam search uses, so an exported model is decoded
by the same `common.beam_search` (and CTC prefix scoring) as a PyTorch one: still one search.

`encode` runs the encoder graph once per batch and returns its per-frame outputs packed along the
last axis, (B, T', V + frame memory widths): the CTC log-probs, then the decoder's frame memory
(e.g. the encoder output and its attention projection). The beam search only selects rows and
frames of that tensor and hands it to `ctc_log_probs` and `decoder.prepare`, which slice their
parts. The decoder graph is one step over (utterance x beam) rows; its state and memory are dicts
of tensors with rows first, laid out by the PyTorch decoder class's own weight-free functions
(`memory`, `initial_state`, `trim_time`), so pruning is the same `index_select`.

ONNX Runtime gets as many threads as torch has (`torch.set_num_threads`), so one knob sets both
halves of a decode; it runs on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from common.bundle import (EXPORT_ID_FILES, Bundle, BundleError, Frontend, files_id, load_frontend,
                           read_export_meta)
from common.models import ModelConfig
from common.models.interfaces import DecoderStep
from common.models.lstm_decoder import LSTMAttentionDecoder
from common.models.rows import Rows
from common.models.transformer_decoder import TransformerDecoder

DECODERS = {"lstm": LSTMAttentionDecoder, "transformer": TransformerDecoder}


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Pool threads that spin between the many tiny per-step calls of a beam search take the cores
    # from torch's own threads (the search's tensor ops) and from Python
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3          # errors only: shape-inference notes are not for users
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


class OnnxDecoder(DecoderStep):
    """prepare / init_state / step / trim_time over the decoder graph (see the module doc)."""

    def __init__(self, graph: ort.InferenceSession, family: type, cfg: Any, frame_memory: list[list],
                 offset: int, state: list[str]) -> None:
        self.graph, self.family, self.cfg, self.state = graph, family, cfg, state
        self.frame_memory = [(str(name), int(width)) for name, width in frame_memory]
        self.offset = offset                  # the frame memory's first column in the packed output
        self.inputs = [i.name for i in graph.get_inputs()]
        self.outputs = [o.name for o in graph.get_outputs()]

    def prepare(self, enc: torch.Tensor, enc_lens: torch.Tensor) -> Rows:
        frames, start = {}, self.offset
        for name, width in self.frame_memory:
            frames[name] = enc[..., start:start + width].contiguous()            # (N, T', width)
            start += width
        return self.family.memory(frames, enc_lens)

    def init_state(self, memory: Rows) -> Rows:
        return self.family.initial_state(memory, self.cfg)

    def step(self, tokens: torch.Tensor, state: Rows, memory: Rows) -> tuple[torch.Tensor, Rows]:
        """tokens (N,) -> log-probs (N, V), next state."""
        feeds = {"tokens": tokens, **{f"state.{k}": v for k, v in state.items()},
                 **{f"memory.{k}": v for k, v in memory.items()}}
        logp, *after = self.graph.run(self.outputs, {n: _numpy(feeds[n]) for n in self.inputs})
        return torch.from_numpy(logp), {k: torch.from_numpy(v) for k, v in zip(self.state, after)}

    def trim_time(self, memory: Rows, state: Rows, frames: int) -> tuple[Rows, Rows]:
        """As the PyTorch decoder trims, then contiguous, so later steps feed the graph without copies."""
        memory, state = self.family.trim_time(memory, state, frames)
        return ({k: v.contiguous() for k, v in memory.items()},
                {k: v.contiguous() for k, v in state.items()})


class OnnxSeq2Seq:
    """The inference half of `Seq2Seq` (encode, ctc_log_probs, decoder, sizes) over ONNX Runtime."""

    def __init__(self, path: Path, front: Frontend, meta: dict[str, Any], threads: int) -> None:
        self.cfg: ModelConfig = front.model_cfg
        self.input_dim, self.vocab_size, self.params = front.input_dim, front.vocab_size, meta["params"]
        graphs = meta["graphs"]
        frame_names = [f"memory.{name}" for name, _ in graphs["frame_memory"]]
        self.encoder = _open(path, "encoder.onnx", threads, ["feats", "lens"],
                             ["enc_lens", "ctc_logp", *frame_names])
        step_inputs = {"tokens", *(f"state.{k}" for k in graphs["state"]),
                       *(f"memory.{k}" for k in graphs["memory"])}
        decoder = _open(path, "decoder.onnx", threads, step_inputs,
                        ["logp", *(f"next.{k}" for k in graphs["state"])])
        self.decoder = OnnxDecoder(decoder, DECODERS[self.cfg.decoder.type], self.cfg.decoder,
                                   graphs["frame_memory"], self.vocab_size, graphs["state"])

    def num_params(self) -> int:
        return self.params

    def encode(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F), (B,) -> packed (B, T', V + frame memory widths), (B,)."""
        enc_lens, *frames = self.encoder.run(None, {"feats": _numpy(feats.float()), "lens": _numpy(lens.long())})
        return torch.cat([torch.from_numpy(f) for f in frames], dim=-1), torch.from_numpy(enc_lens)

    def ctc_log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        """Packed (B, T', ·) -> (B, T', V) log-probabilities."""
        return enc[..., : self.vocab_size]

    def to(self, device: str | torch.device) -> "OnnxSeq2Seq":
        if torch.device(device).type != "cpu":
            raise ValueError("an exported model runs in ONNX Runtime on the CPU: use --device cpu "
                             "(or auto), or decode its PyTorch bundle on the GPU")
        return self

    def eval(self) -> "OnnxSeq2Seq":
        return self


def _open(path: Path, name: str, threads: int, inputs: Any, outputs: list[str]) -> ort.InferenceSession:
    """A graph's session, after checking that its inputs and outputs are the contract's."""
    try:
        graph = session(path / name, threads)
    except Exception as exc:   # onnxruntime's load errors (InvalidProtobuf, Fail, ...) share no base
        raise BundleError(f"corrupt exported model {path}: {name}: "
                          f"{str(exc).splitlines()[0][:200]}") from None
    got_in = {i.name for i in graph.get_inputs()}
    got_out = [o.name for o in graph.get_outputs()]
    if not got_in <= set(inputs) or got_out != outputs:
        raise BundleError(f"corrupt exported model {path}: {name} has inputs {sorted(got_in)} and outputs "
                          f"{got_out}; meta.json says {sorted(inputs)} -> {outputs}")
    return graph


def load_exported(path: str | Path) -> Bundle:
    """An exported directory as a Bundle whose model is an `OnnxSeq2Seq` (damage: one-line BundleError)."""
    path = Path(path)
    meta = read_export_meta(path)
    front = load_frontend(path, "exported model")
    try:
        model = OnnxSeq2Seq(path, front, meta, torch.get_num_threads())
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"corrupt exported model {path}: meta.json: bad graphs entry ({exc})") from None
    return Bundle(model=model, tokenizer=front.tokenizer, features=front.features, meta=meta,
                  bundle_id=files_id(path, EXPORT_ID_FILES), path=path)
