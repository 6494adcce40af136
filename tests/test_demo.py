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
    assert by_role["kd"]["targets"].startswith("KD k=3")
    md = (out / "report" / "report.md").read_text()
    assert all(r["name"] in md for r in rows)
    assert (out / "report" / "report.png").stat().st_size > 1000
    stages = json.loads((out / "demo.json").read_text())
    assert {"data", "teacher", "serve", "label", "report", "total"} <= stages.keys()
    assert stages["label"]["utterances"] == 48
    assert "files over HTTP" in stages["serve"]["summary"]
    assert "POST" in done.stdout   # the HTTP transcripts are shown


def test_rerun_reuses_every_finished_stage(quick_demo):
    out, _ = quick_demo
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/bundle/model.safetensors")}
    again = seqkd("demo", "--quick", "--out", str(out), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing") >= 4   # data, teacher, the two students (and the labels)
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
