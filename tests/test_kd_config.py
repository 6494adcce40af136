"""The KD settings in one dataclass (common.kd.KDConfig): a recipe's `kd:` section, checked on load;
the `seqkd distill` flags over it; the bundle meta's `kd` entry, read back by the report's targets
label and the service's public meta."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from common.config import ConfigError
from common.kd import KDConfig
from scoring.report import targets_label
from seqkd.cli import build_parser
from seqkd.distill_cmd import settings
from services.teacher import public_meta
from tests.conftest import seqkd
from trainer.data import PseudoLabels
from trainer.distill import Labels, SequenceKD, bundle_meta
from trainer.recipe import load_recipe, recipe_from_dict

STUDENT = Path("conf/student_small.yaml")


def write_recipe(tmp_path: Path, kd: dict | None) -> Path:
    data = yaml.safe_load(STUDENT.read_text())
    if kd is not None:
        data["kd"] = kd
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def distill_settings(recipe: Path, *flags: str, without: str = ""):
    args = build_parser().parse_args(["distill", "--config", str(recipe), "--labels", "L", "--out", "RUN",
                                      *flags])
    if without:   # a setting that has no flag
        delattr(args, without)
    return settings(args)


def test_a_recipes_kd_section_loads_and_the_flags_override_it(tmp_path):
    path = write_recipe(tmp_path, {"word_kd": 0.5, "frame_kd": 0.5, "kd_temperature": 2, "expand": True})
    recipe, pseudo, kd = distill_settings(path)
    assert kd == recipe.kd == KDConfig(word_kd=0.5, frame_kd=0.5, kd_temperature=2.0, expand=True)
    assert pseudo == PseudoLabels(k=5)
    # the run's recipe.yaml holds the section, and reads back as the same settings
    assert recipe_from_dict(yaml.safe_load(yaml.safe_dump(recipe.to_dict()))).kd == kd

    _, _, kd = distill_settings(path, "--word-kd", "0.25", "--no-expand", "--weights", "score", "--k", "2")
    assert kd == KDConfig(weights="score", word_kd=0.25, frame_kd=0.5, kd_temperature=2.0, expand=False)
    assert distill_settings(path, "--word-kd", "0.25", without="expand")[2].expand is True

    recipe, _, kd = distill_settings(write_recipe(tmp_path, None))   # no section, no flags: the defaults
    assert recipe.kd is None and kd == KDConfig() and kd.soft is False
    _, _, kd = distill_settings(write_recipe(tmp_path, None), "--frame-kd", "0.5", "--expand")
    assert kd == KDConfig(frame_kd=0.5, expand=True)
    assert SequenceKD.of(kd) == SequenceKD(frame_kd=0.5, expand=True) and SequenceKD.of(kd).expand


@pytest.mark.parametrize("section,fragment", [
    ({"word_kd": 1.5}, "kd.word_kd: must be in [0, 1], not 1.5"),
    ({"frame_kd": -0.5}, "kd.frame_kd: must be in [0, 1], not -0.5"),
    ({"gt_weight": 2}, "kd.gt_weight: must be in [0, 1], not 2.0"),
    ({"kd_temperature": 0}, "kd.kd_temperature: must be > 0, not 0.0"),
    ({"weights": "score", "temperature": -1}, "kd.temperature: must be > 0, not -1.0"),
    ({"weights": "softmax"}, "kd.weights: 'softmax' is not one of 'uniform', 'score'"),
    ({"ctc_target": "2best"}, "kd.ctc_target: '2best' is not one of '1best', 'transcript'"),
    ({"word_kd": "half"}, "kd.word_kd: expected a number"),
    ({"expand": "yes"}, "kd.expand: expected true/false"),
    ({"wordkd": 0.5}, "kd.wordkd: unknown key"),
    ([0.5], "kd: expected a mapping"),
])
def test_a_bad_kd_value_is_refused_in_one_line_naming_the_field(tmp_path, section, fragment):
    path = write_recipe(tmp_path, section)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}: {fragment}")
    assert "\n" not in str(info.value)


def test_a_bad_flag_is_refused_like_the_recipe_and_in_code_with_the_messages_of_before(tmp_path):
    with pytest.raises(ConfigError, match=r"kd\.frame_kd: must be in \[0, 1\], not 2\.0"):
        distill_settings(write_recipe(tmp_path, {"frame_kd": 0.5}), "--frame-kd", "2")
    with pytest.raises(ValueError, match=r"^gt_weight must be in \[0, 1\], not 1\.5$"):
        KDConfig(gt_weight=1.5)
    with pytest.raises(ValueError, match=r"^ctc_target must be '1best' or 'transcript', not 'x'$"):
        SequenceKD(ctc_target="x")


def test_the_command_refuses_a_bad_flag_in_one_line_before_anything_starts(tmp_path):
    out = seqkd("distill", "--config", str(write_recipe(tmp_path, None)), "--labels", str(tmp_path / "none"),
                "--out", str(tmp_path / "run"), "--word-kd", "1.5", timeout=300)
    assert out.returncode == 2, out.stderr
    recipe = tmp_path / "student.yaml"
    assert out.stderr.strip() == f"seqkd distill: {recipe}: kd.word_kd: must be in [0, 1], not 1.5"
    assert not (tmp_path / "run").exists()


LABELS = Labels(Path("L"), "teacher123", {"beam": 5, "nbest": 5, "topm": 8}, None)


@pytest.mark.parametrize("pseudo,kd,label", [
    (PseudoLabels(k=1), KDConfig(word_kd=0.5, frame_kd=0.5), "KD k=1 b=5 +word 0.5 +frame 0.5"),
    (PseudoLabels(k=3, max_wer=0.5),
     KDConfig(weights="score", temperature=2.0, gt_weight=0.25, word_kd=0.5, kd_temperature=2.0, expand=True),
     "KD k=3 b=5 score T=2.0 +GT 0.25 WER<=0.5 +word 0.5 T=2 expanded"),
    (PseudoLabels(k=2), KDConfig(kd_temperature=3.0), "KD k=2 b=5 uniform"),
    # a setting the label has no words for is named as written, where it is not its default
    (PseudoLabels(k=1), KDConfig(ctc_target="transcript"), "KD k=1 b=5 ctc_target=transcript"),
])
def test_the_bundle_meta_kd_entry_round_trips_into_the_report_label(pseudo, kd, label):
    meta = json.loads(json.dumps(bundle_meta(LABELS, pseudo, kd)))   # as meta.json holds it
    assert meta["kd"] == asdict(kd) and not {"word_kd", "frame_kd", "weights"} & meta.keys()
    assert KDConfig.from_meta(meta) == kd
    assert targets_label(meta) == label
    # a bundle of the previous version kept the settings as flat keys: the same label
    flat = {**{k: v for k, v in meta.items() if k != "kd"}, **meta["kd"]}
    assert targets_label(flat) == label
    # the service shows the entry through the dataclass: its fields, nothing else
    shown = public_meta({**meta, "kd": {**meta["kd"], "train_data": "/secret"}, "dev_data": "/secret"})
    assert shown["kd"] == asdict(kd) and shown["teacher_id"] == "teacher123"
    assert "/secret" not in json.dumps(shown)
    assert "kd" not in public_meta({"targets": "gt", "steps": 3})
