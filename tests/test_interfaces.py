"""The parts' interfaces (common/models/interfaces.py, trainer/objective.py): every implementation
declares the one it provides, and a part missing a method cannot be built."""

from __future__ import annotations

import pytest
import torch

from common.models.interfaces import DecoderStep, Encoder
from common.onnx_model import OnnxDecoder
from tests.conftest import tiny_model
from trainer.distill import SequenceKD
from trainer.loop import GroundTruth
from trainer.objective import Objective


@pytest.mark.parametrize("family", ["pblstm-lstm", "conformer-transformer"])
def test_each_model_family_is_an_encoder_and_a_decoder_step(family):
    model = tiny_model(family)
    assert isinstance(model.encoder, Encoder) and isinstance(model.decoder, DecoderStep)
    enc, lens = model.encoder(torch.randn(2, 40, 40), torch.tensor([40, 31]))
    assert enc.shape[-1] == model.encoder.output_dim and lens.tolist()[0] >= lens.tolist()[1]


def test_the_onnx_decoder_and_both_objectives_declare_theirs():
    assert issubclass(OnnxDecoder, DecoderStep)
    assert isinstance(GroundTruth(), Objective) and isinstance(SequenceKD(), Objective)


def test_a_part_missing_a_method_cannot_be_built():
    class NoTrim(DecoderStep):
        def prepare(self, enc, enc_lens): ...
        def init_state(self, memory): ...
        def step(self, tokens, state, memory): ...

    with pytest.raises(TypeError, match="trim_time"):
        NoTrim()
    with pytest.raises(TypeError, match="loss"):
        type("NoLoss", (Objective,), {"batches": lambda self, *a: iter(())})()
