"""Sentencepiece tokenizer with the ids the models rely on.

Fixed special ids (documented in the README and DESIGN):
  0  <blank>  CTC blank; also the padding id of target tensors (masked out of losses)
  1  <unk>
  2  </s>     end of sentence; also used as start-of-sentence on the decoder input,
              as ESPnet does, so the output layer needs no unused row
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Literal

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_model

BLANK_ID, UNK_ID, EOS_ID = 0, 1, 2
SOS_ID = EOS_ID

ModelType = Literal["unigram", "bpe", "char"]


class TokenizerError(ValueError):
    """A tokenizer model that cannot be trained or loaded."""


class Tokenizer:
    def __init__(self, model_proto: bytes) -> None:
        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError, TypeError) as exc:
            raise TokenizerError(f"invalid sentencepiece model: {exc}") from None
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.eos_id()) != (BLANK_ID, UNK_ID, EOS_ID):
            raise TokenizerError("sentencepiece model lacks seqkd's special ids "
                                 "(<blank>=0, <unk>=1, </s>=2); retrain it with seqkd")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 256,
              model_type: ModelType = "unigram") -> "Tokenizer":
        lines = [t.strip() for t in texts if t and t.strip()]
        if not lines:
            raise TokenizerError("no text to train a tokenizer on")
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size,
                model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
                pad_id=BLANK_ID, pad_piece="<blank>", unk_id=UNK_ID, bos_id=-1,
                eos_id=EOS_ID, eos_piece="</s>", normalization_rule_name="identity",
                minloglevel=2, num_threads=1)
        except RuntimeError as exc:
            raise TokenizerError(f"sentencepiece training failed: {exc}") from None
        return cls(buf.getvalue())

    @property
    def model_type(self) -> str:
        """unigram, bpe, char or word: how the model was trained (from its proto)."""
        spec = sp_model.ModelProto()
        spec.ParseFromString(self.proto)
        return sp_model.TrainerSpec.ModelType.Name(spec.trainer_spec.model_type).lower()

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        try:
            return cls(Path(path).read_bytes())
        except FileNotFoundError:
            raise TokenizerError(f"tokenizer model not found: {path}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.proto)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids; blank and </s> are dropped, <unk> shows as sentencepiece's ' ⁇ '."""
        return self.sp.decode([int(i) for i in ids if int(i) not in (BLANK_ID, EOS_ID)])

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]
