"""The paper's table for a set of bundles on one test set: size, compression, WER, CER, RTF.

Every bundle is decoded with the same beam settings on the same manifest. Evaluations are
cached in OUT/evals/ under the bundle id, the test set and the settings, so a re-run (or a
resumed demo) decodes only what changed. The teacher is named, or found as the bundle the KD
students name as theirs, or else taken to be the largest model. It may be a teacher seqkd did
not train (a Whisper CTranslate2 directory): it is decoded with the same beam without what it
lacks (no CTC weight), and its text scored after the same normalisation as its labels.

A claim that a KD student beats its ground-truth twin (the GT student of the same recipe) comes
with a paired bootstrap over the test utterances: the 95% interval of the WER difference and a
p-value. Each row also says how long its model trained (steps, seconds), so equal-budget and
converged comparisons can both be read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.beam_search import BeamConfig
from common.bundle import BundleError, disk_bytes, find_bundle, model_form, model_name
from common.kd import KDConfig
from common.metrics import bootstrap_wer, utterance_errors
from common.teachers import teacher_files, teacher_id, teacher_meta
from scoring.evaluate import evaluate, write_evaluation

ROLES = ("teacher", "gt", "kd")
LEFT_COLUMNS = 3            # model, targets, form: text; the rest are numbers


class ReportError(ValueError):
    """A report that cannot be made: the message says what to do."""


@dataclass
class Row:
    name: str
    role: str                   # teacher | gt | kd
    targets: str                # "GT", "KD k=5 uniform", ...
    params: int
    compression: float          # teacher params / params
    wer: float
    cer: float
    rel_wer: float | None       # (wer - teacher wer) / teacher wer
    rtf: float
    bundle: str
    recipe: str = ""
    steps: int | None = None            # optimizer steps of the scored bundle's run
    train_s: float | None = None        # its training time
    wer_ci95: tuple[float, float] | None = None        # bootstrap 95% interval of the WER
    gt_twin: str | None = None                         # KD rows: the GT student compared with
    wer_diff_vs_gt: float | None = None                # WER - the twin's WER (negative: KD wins)
    ci95: tuple[float, float] | None = None            # paired bootstrap 95% interval of that
    p_value: float | None = None
    form: str = "pytorch fp32"                         # or "onnx fp32", "onnx int8" (seqkd export)
    size_mb: float | None = None                       # the bundle or exported directory on disk
    recorded_wer: float | None = None                  # on recordings of people (--recorded)
    recorded_cer: float | None = None


def targets_label(meta: dict) -> str:
    if meta.get("targets") == "pretrained":
        return "pretrained"
    if meta.get("targets") != "kd":
        return "GT"
    beam = f" b={meta['label_beam']}" if meta.get("label_beam") else ""
    return " ".join([f"KD k={meta.get('k')}{beam}",
                     *KDConfig.from_meta(meta).describe(meta.get("k", 1), meta.get("max_wer"))])


def evaluation(bundle: Path, test: Path, cfg: BeamConfig, cache: Path) -> tuple[dict, dict]:
    """result.json of `bundle` on `test` (decoded now, or reused from an identical earlier run)
    and, per utterance id, its (word errors, reference words)."""
    files = teacher_files(bundle)
    cfg = files.fitted(cfg)   # the same beam, less what a teacher of another kind lacks
    key = hashlib.sha256(json.dumps([files.teacher_id, str(test.resolve()), asdict(cfg)])
                         .encode()).hexdigest()[:16]
    where = cache / f"{model_name(bundle)}-{key}"
    if not (where / "result.json").exists():   # on the CPU: RTFs of PyTorch and exported forms compare
        write_evaluation(evaluate(bundle, test, cfg, device="cpu", show_progress=False), where)
    lines = [json.loads(line) for line in (where / "hyps.jsonl").read_text().splitlines()]
    scored = [h for h in lines if h["ref"].strip()]
    errors, words = utterance_errors([h["ref"] for h in scored], [h["hyp"] for h in scored])
    per_utt = {h["utt_id"]: (e, n) for h, e, n in zip(scored, errors, words)}
    return json.loads((where / "result.json").read_text()), per_utt


def build_report(paths: list[str | Path], test: str | Path, cfg: BeamConfig, out: str | Path,
                 teacher: str | Path | None = None, console: Console | None = None,
                 recorded: str | Path | None = None) -> list[Row]:
    """Every bundle scored on `test` and, when given, on `recorded` (recordings of people, e.g.
    `seqkd prepare asterisk`): the second pair of columns says whether a model reads speech or
    only the voices it was trained on."""
    bundles = [find_bundle(p) for p in paths]
    if teacher is not None and find_bundle(teacher) not in bundles:
        bundles.insert(0, find_bundle(teacher))
    try:
        metas = {b: teacher_meta(b) for b in bundles}
        ids = {b: teacher_id(b) for b in bundles}
    except (OSError, BundleError) as exc:
        raise ReportError(f"not a model bundle: {exc}") from None
    names = [model_name(b) for b in bundles]
    if len(set(names)) != len(names):
        raise ReportError(f"two bundles share a name ({names}): give each run its own directory")
    teacher_bundle = _teacher(bundles, metas, ids, teacher)
    cache, test = Path(out) / "evals", Path(test)
    results, per_utt = {}, {}
    for b in bundles:
        results[b], per_utt[b] = evaluation(b, test, cfg, cache)
        if console:
            console.print(f"evaluated {model_name(b)}: WER {100 * results[b]['wer']:.2f}% "
                          f"CER {100 * results[b]['cer']:.2f}% RTF {results[b]['rtf']:.4f} "
                          f"({results[b]['utterances']} utts)")
    on_recorded = {b: evaluation(b, Path(recorded), cfg, cache)[0] for b in bundles} if recorded else {}
    if console and on_recorded:
        for b, r in on_recorded.items():
            console.print(f"evaluated {model_name(b)} on recorded speech: WER {100 * r['wer']:.2f}% "
                          f"CER {100 * r['cer']:.2f}% ({r['utterances']} utts)")
    top = results[teacher_bundle]
    rows = []
    for b in bundles:
        r, meta = results[b], metas[b]
        role = "teacher" if b == teacher_bundle else ("kd" if meta.get("targets") == "kd" else "gt")
        errors, words = zip(*per_utt[b].values())
        rows.append(Row(name=model_name(b), role=role, targets=targets_label(meta), params=r["params"],
                        compression=top["params"] / r["params"], wer=r["wer"], cer=r["cer"],
                        rel_wer=(r["wer"] - top["wer"]) / top["wer"] if top["wer"] else None,
                        rtf=r["rtf"], bundle=str(b), recipe=meta.get("recipe", ""),
                        steps=meta.get("steps"), train_s=meta.get("train_seconds"),
                        wer_ci95=bootstrap_wer(list(errors), list(words)).ci95,
                        form=meta.get("form") or model_form(meta),
                        size_mb=round(disk_bytes(b) / 1e6, 3),
                        recorded_wer=on_recorded[b]["wer"] if on_recorded else None,
                        recorded_cer=on_recorded[b]["cer"] if on_recorded else None))
    by_name = {row.name: b for row, b in zip(rows, bundles)}
    for row in rows:
        twin = gt_twin(row, rows)
        if twin is not None:
            ids = sorted(per_utt[by_name[row.name]].keys() & per_utt[by_name[twin.name]].keys())
            mine, theirs = per_utt[by_name[row.name]], per_utt[by_name[twin.name]]
            diff = bootstrap_wer([mine[u][0] for u in ids], [mine[u][1] for u in ids],
                                 [theirs[u][0] for u in ids])
            row.gt_twin, row.wer_diff_vs_gt, row.ci95, row.p_value = \
                twin.name, diff.value, diff.ci95, diff.p_value
    order = {role: i for i, role in enumerate(ROLES)}
    return sorted(rows, key=lambda row: (-row.params, order[row.role], row.name))


def gt_twin(row: Row, rows: list[Row]) -> Row | None:
    """A KD row's ground-truth twin: the GT student of the same recipe (of several, the one whose
    run name shares the longest prefix with the KD run's, e.g. the same seed's)."""
    if row.role != "kd":
        return None
    twins = [r for r in rows if r.role == "gt" and r.recipe == row.recipe]
    return max(twins, key=lambda r: (len(os.path.commonprefix([r.name, row.name])), r.name), default=None)


def _teacher(bundles: list[Path], metas: dict, ids: dict, named: str | Path | None) -> Path:
    if named is not None:
        return find_bundle(named)
    claimed = {m.get("teacher_id") for m in metas.values() if m.get("targets") == "kd"}
    found = [b for b in bundles if ids[b] in claimed]
    if len(found) == 1:
        return found[0]
    return max(bundles, key=lambda b: metas[b].get("params", 0))


def _pct(x: float | None, signed: bool = False) -> str:
    return "" if x is None else (f"{100 * x:+.1f}%" if signed else f"{100 * x:.2f}")


def _diff(r: Row) -> str:
    if r.wer_diff_vs_gt is None or r.ci95 is None:
        return ""
    lo, hi = r.ci95
    return f"{100 * r.wer_diff_vs_gt:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"


def _p(p: float | None) -> str:
    return "" if p is None else (f"{p:.3f}" if p >= 0.001 else "<0.001")


def table_lines(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    head = ["model", "targets", "form", "params", "MB", "compression", "WER %", "CER %", "WER vs teacher",
            "WER - GT twin [95% CI]", "p", "steps", "train s", "CPU RTF"]
    body = [[r.name, r.targets, r.form, f"{r.params:,}", "" if r.size_mb is None else f"{r.size_mb:.2f}",
             f"{r.compression:.1f}x", _pct(r.wer), _pct(r.cer),
             "" if r.role == "teacher" else _pct(r.rel_wer, signed=True), _diff(r), _p(r.p_value),
             "" if r.steps is None else f"{r.steps:,}", "" if r.train_s is None else f"{r.train_s:.0f}",
             f"{r.rtf:.4f}"] for r in rows]
    if any(r.recorded_wer is not None for r in rows):   # beside the test split's WER and CER
        at = head.index("CER %") + 1
        head[at:at] = ["recorded WER %", "recorded CER %"]
        for line, r in zip(body, rows):
            line[at:at] = [_pct(r.recorded_wer), _pct(r.recorded_cer)]
    return head, body


def rich_table(rows: list[Row], title: str) -> Table:
    head, body = table_lines(rows)
    table = Table(title=title)
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i < LEFT_COLUMNS else "right")
    for line in body:
        table.add_row(*line)
    return table


def markdown(rows: list[Row], title: str) -> str:
    head, body = table_lines(rows)
    right = ["---"] * LEFT_COLUMNS + ["---:"] * (len(head) - LEFT_COLUMNS)
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "| " + " | ".join(right) + " |"]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines) + "\n"


def _params_label(x: float, _pos=None) -> str:
    """Tick labels a reader can use: 250k, 1.2M (not 10^5)."""
    if x >= 1e6:
        return f"{x / 1e6:.3g}M"
    return f"{x / 1e3:.3g}k" if x >= 1e3 else f"{x:.0f}"


def plot(rows: list[Row], path: Path, title: str) -> None:
    """WER against parameters (log x), with each model's bootstrap 95% interval: the
    compression/accuracy trade-off at a glance, GT and KD students of a size side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, ax = plt.subplots(figsize=(6.8, 4.6), dpi=120)
    styles = {"teacher": ("*", "black", "teacher", 1.0), "gt": ("o", "tab:blue", "student (GT)", 0.96),
              "kd": ("^", "tab:red", "student (KD)", 1.04)}
    for role, (marker, color, label, nudge) in styles.items():
        picked = [r for r in rows if r.role == role]
        if not picked:
            continue
        xs = [r.params * nudge for r in picked]   # GT and KD twins side by side, not on top
        ys = [100 * r.wer for r in picked]
        err = [[100 * (r.wer - r.wer_ci95[0]) if r.wer_ci95 else 0 for r in picked],
               [100 * (r.wer_ci95[1] - r.wer) if r.wer_ci95 else 0 for r in picked]]
        ax.errorbar(xs, ys, yerr=err, fmt=marker, color=color, ms=11 if role == "teacher" else 7,
                    capsize=3, label=label, zorder=3)
        for x, y, r in zip(xs, ys, picked):
            ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7)
        heard = [(x, 100 * r.recorded_wer) for x, r in zip(xs, picked) if r.recorded_wer is not None]
        if heard:
            ax.scatter(*zip(*heard), marker=marker, facecolors="none", edgecolors=color, s=60,
                       label=f"{label}, recorded speech", zorder=3)
    ax.set_xscale("log")
    sizes = [r.params for r in rows]
    ax.set_xlim(min(sizes) / 1.6, max(sizes) * 1.6)   # room for the labels, ticks on both sides
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(_params_label))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("WER (%): test (filled, 95% bootstrap interval), recorded (open)"
                  if any(r.recorded_wer is not None for r in rows) else "test WER (%), 95% bootstrap interval")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def dev_curves(rows: list[Row]) -> dict[str, list[tuple[int, float]]]:
    """Per student row, (step, dev WER) of every epoch, read from its run's metrics.jsonl."""
    curves = {}
    for r in rows:
        metrics = Path(r.bundle).parent / "metrics.jsonl"
        if r.role == "teacher" or Path(r.bundle).name != "bundle" or not metrics.exists():
            continue
        points = [json.loads(line) for line in metrics.read_text().splitlines()]
        curves[r.name] = sorted({m["step"]: m["dev_wer"] for m in points if "dev_wer" in m}.items())
    return curves


def plot_dev_curves(rows: list[Row], path: Path, title: str) -> bool:
    """Dev WER against training steps of the GT and KD students; False when no run has any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = dev_curves(rows)
    if not any(curves.values()):
        return False
    roles = {r.name: r.role for r in rows}
    fig, ax = plt.subplots(figsize=(6.8, 4.2), dpi=120)
    for name, points in curves.items():
        ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", ms=3,
                ls="-" if roles[name] == "kd" else "--", label=name)
    ax.set_xlabel("training steps")
    ax.set_ylabel("dev WER (%), per epoch")
    ax.set_ylim(0, min(110, max(100 * p[1] for pts in curves.values() for p in pts) + 5))
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(rows: list[Row], out: str | Path, title: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    (out / "report.md").write_text(markdown(rows, title))
    plot(rows, out / "report.png", title)
    plot_dev_curves(rows, out / "dev_curves.png", f"{title}: dev WER while training")
