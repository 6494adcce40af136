"""`seqkd demo --quick` end to end, as CI runs it: a real corpus, real Ray Train / Serve / Data."""

from __future__ import annotations

import json

import pytest

from tests.conftest import seqkd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    done = seqkd("demo", "--quick", "--out", str(out), timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_quick_demo_reports_teacher_gt_and_kd_students(quick_demo):
    out, done = quick_demo
    rows = json.loads((out / "report" / "report.json").read_text())
    assert sorted(r["role"] for r in rows) == ["gt", "kd", "teacher"]
    by_role = {r["role"]: r for r in rows}
    teacher = by_role["teacher"]
    for role in ("gt", "kd"):
        student = by_role[role]
        assert student["params"] == by_role["gt"]["params"] < teacher["params"]   # same recipe, smaller
        assert student["compression"] == pytest.approx(teacher["params"] / student["params"])
        assert 0 <= student["wer"] and 0 <= student["cer"]
    kd, gt = by_role["kd"], by_role["gt"]
    assert kd["targets"].startswith("KD k=3")
    # the paired bootstrap against the GT twin: the difference is the two rows' WERs, inside its CI
    assert kd["gt_twin"] == gt["name"]
    assert kd["wer_diff_vs_gt"] == pytest.approx(kd["wer"] - gt["wer"], abs=1e-9)
    assert kd["ci95"][0] <= kd["wer_diff_vs_gt"] <= kd["ci95"][1] and 0 < kd["p_value"] <= 1
    assert gt["wer_diff_vs_gt"] is None and teacher["p_value"] is None
    assert all(r["wer_ci95"][0] <= r["wer"] <= r["wer_ci95"][1] for r in rows)
    assert kd["steps"] == gt["steps"] >= 1 and kd["train_s"] > 0   # the same budget
    assert (out / "report" / "dev_curves.png").stat().st_size > 1000
    md = (out / "report" / "report.md").read_text()
    assert all(r["name"] in md for r in rows) and "GT twin [95% CI]" in md
    assert (out / "report" / "report.png").stat().st_size > 1000
    stages = json.loads((out / "demo.json").read_text())
    assert {"data", "teacher", "serve", "label", "report", "total"} <= stages.keys()
    assert stages["label"]["utterances"] == 48
    assert stages["data"]["test_unseen_engine"] == 4
    assert sorted(stages["report"]["test_unseen_engine_wer"]) == sorted(r["name"] for r in rows)
    # four optimizer steps teach nothing: the demo must say its teacher is not one to trust
    assert any("WER on its dev set" in w for w in stages["total"]["warnings"])
    assert "WARNING" in done.stdout
    assert "files over HTTP" in stages["serve"]["summary"]
    assert "POST" in done.stdout   # the HTTP transcripts are shown


def test_rerun_reuses_every_finished_stage(quick_demo):
    out, _ = quick_demo
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/bundle/model.safetensors")}
    again = seqkd("demo", "--quick", "--out", str(out), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing") >= 4   # data, teacher, the two students (and the labels)
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
