"""Recipes are validated on load: the key at fault is named."""

from __future__ import annotations

import pytest

from common.config import ConfigError, from_dict
from common.features import FeatureConfig
from common.models import ModelConfig
from tests.conftest import FAMILIES


def _cfg(**over):
    data = {"encoder": dict(FAMILIES["pblstm-lstm"]["encoder"]),
            "decoder": dict(FAMILIES["pblstm-lstm"]["decoder"])}
    for path, value in over.items():
        section, key = path.split("__")
        data[section][key] = value
    return data


def test_valid_configs_build():
    for family in FAMILIES.values():
        cfg = ModelConfig.from_dict(family)
        assert cfg.encoder.type == family["encoder"]["type"]


@pytest.mark.parametrize("data,fragment", [
    (_cfg(encoder__hiden=3), "model.encoder.hiden: unknown key"),
    (_cfg(decoder__hidden="big"), "model.decoder.hidden: expected an integer"),
    (_cfg(encoder__subsample=[2, 3]), "subsample entries must be 1 or 2"),
    (_cfg(encoder__layers=3), "subsample has 2 entries for 3 layers"),
    (_cfg(encoder__type="rnnt"), "model.encoder.type: 'rnnt' is not one of"),
    (_cfg(decoder__dropout=True), "model.decoder.dropout: expected a number"),
    ({"encoder": FAMILIES["pblstm-lstm"]["encoder"]}, "model.decoder: missing required key"),
    ({**FAMILIES["pblstm-lstm"], "ctc_weight": 2.0}, "ctc_weight: must be in [0, 1]"),
    ({**FAMILIES["pblstm-lstm"], "lr": 1.0}, "model.lr: unknown key"),
])
def test_bad_configs_name_the_key(data, fragment):
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(data)
    assert fragment in str(info.value)


def test_dataclass_sections():
    assert from_dict(FeatureConfig, {"n_mels": 40}).n_mels == 40
    with pytest.raises(ConfigError, match="features.n_mel: unknown key"):
        from_dict(FeatureConfig, {"n_mel": 40}, "features")
