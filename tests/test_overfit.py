"""Features + model + loss + search fit together: a tiny model memorises 4 real utterances."""

from __future__ import annotations

from common.beam_search import BeamConfig
from common.bundle import load_bundle
from common.metrics import error_rates
from common.transcriber import Transcriber
from tests.conftest import SENTENCES

def test_overfits_four_utterances_to_cer_zero(tiny_bundle, speech_dir):
    path, losses = tiny_bundle
    assert losses[-1] < 0.1 * losses[0]
    transcriber = Transcriber(path, device="cpu")
    files = [speech_dir / f"utt{i}.wav" for i in range(len(SENTENCES))]
    greedy = transcriber.transcribe(files, BeamConfig(beam=1))
    rates = error_rates(SENTENCES, [t.text for t in greedy])
    assert rates.cer == 0.0, [t.text for t in greedy]
    beam = transcriber.transcribe(files, BeamConfig(beam=4, nbest=3, ctc_weight=0.3))
    assert [t.text for t in beam] == SENTENCES
    assert all(len(t.nbest) == 3 and t.duration_s > 0.5 and t.rtf > 0 for t in beam)
    assert load_bundle(path).meta["params"] == transcriber.bundle.model.num_params()
