"""The paper's table for a set of bundles on one test set: size, compression, WER, CER, RTF.

Every bundle is decoded with the same beam settings on the same manifest. Evaluations are
cached in OUT/evals/ under the bundle id, the test set and the settings, so a re-run (or a
resumed demo) decodes only what changed. The teacher is named, or found as the bundle the KD
students name as theirs, or else taken to be the largest model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.beam_search import BeamConfig
from common.bundle import BundleError, bundle_id, find_bundle
from trainer.evaluate import evaluate, write_evaluation

ROLES = ("teacher", "gt", "kd")


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


def run_name(bundle: Path) -> str:
    """A run directory's name for RUN/bundle, else the bundle directory's own name."""
    return bundle.parent.name if bundle.name == "bundle" else bundle.name


def targets_label(meta: dict) -> str:
    if meta.get("targets") != "kd":
        return "GT"
    extra = [meta.get("weights", "uniform")]
    if meta.get("weights") == "score":
        extra.append(f"T={meta.get('temperature')}")
    if meta.get("gt_weight"):
        extra.append(f"+GT {meta['gt_weight']}")
    if meta.get("max_wer") is not None:
        extra.append(f"WER<={meta['max_wer']}")
    return f"KD k={meta.get('k')} " + " ".join(extra)


def evaluation(bundle: Path, test: Path, cfg: BeamConfig, cache: Path) -> dict:
    """result.json of `bundle` on `test` (decoded now, or reused from an identical earlier run)."""
    key = hashlib.sha256(json.dumps([bundle_id(bundle), str(test.resolve()), asdict(cfg)])
                         .encode()).hexdigest()[:16]
    where = cache / f"{run_name(bundle)}-{key}"
    if (where / "result.json").exists():
        return json.loads((where / "result.json").read_text())
    ev = evaluate(bundle, test, cfg, show_progress=False)
    write_evaluation(ev, where)
    return ev.result()


def build_report(paths: list[str | Path], test: str | Path, cfg: BeamConfig, out: str | Path,
                 teacher: str | Path | None = None, console: Console | None = None) -> list[Row]:
    bundles = [find_bundle(p) for p in paths]
    if teacher is not None and find_bundle(teacher) not in bundles:
        bundles.insert(0, find_bundle(teacher))
    try:
        metas = {b: json.loads((b / "meta.json").read_text()) for b in bundles}
        ids = {b: bundle_id(b) for b in bundles}
    except (OSError, BundleError) as exc:
        raise ReportError(f"not a model bundle: {exc}") from None
    names = [run_name(b) for b in bundles]
    if len(set(names)) != len(names):
        raise ReportError(f"two bundles share a name ({names}): give each run its own directory")
    teacher_bundle = _teacher(bundles, metas, ids, teacher)
    cache, test = Path(out) / "evals", Path(test)
    results = {}
    for b in bundles:
        results[b] = evaluation(b, test, cfg, cache)
        if console:
            console.print(f"evaluated {run_name(b)}: WER {100 * results[b]['wer']:.2f}% "
                          f"CER {100 * results[b]['cer']:.2f}% RTF {results[b]['rtf']:.4f} "
                          f"({results[b]['utterances']} utts)")
    top = results[teacher_bundle]
    rows = []
    for b in bundles:
        r, meta = results[b], metas[b]
        role = "teacher" if b == teacher_bundle else ("kd" if meta.get("targets") == "kd" else "gt")
        rows.append(Row(name=run_name(b), role=role, targets=targets_label(meta), params=r["params"],
                        compression=top["params"] / r["params"], wer=r["wer"], cer=r["cer"],
                        rel_wer=(r["wer"] - top["wer"]) / top["wer"] if top["wer"] else None,
                        rtf=r["rtf"], bundle=str(b)))
    order = {role: i for i, role in enumerate(ROLES)}
    return sorted(rows, key=lambda row: (-row.params, order[row.role], row.name))


def _teacher(bundles: list[Path], metas: dict, ids: dict, named: str | Path | None) -> Path:
    if named is not None:
        return find_bundle(named)
    claimed = {m.get("teacher_id") for m in metas.values() if m.get("targets") == "kd"}
    found = [b for b in bundles if ids[b] in claimed]
    if len(found) == 1:
        return found[0]
    return max(bundles, key=lambda b: (b / "model.safetensors").stat().st_size)


def wide_console(stderr: bool = False) -> Console:
    """The terminal's console, or a 140-column one for logs and pipes (rich squeezes tables to 80)."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=140)


def _pct(x: float | None, signed: bool = False) -> str:
    return "" if x is None else (f"{100 * x:+.1f}%" if signed else f"{100 * x:.2f}")


def table_lines(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    head = ["model", "targets", "params", "compression", "WER %", "CER %", "WER vs teacher", "RTF"]
    body = [[r.name, r.targets, f"{r.params:,}", f"{r.compression:.1f}x", _pct(r.wer), _pct(r.cer),
             "" if r.role == "teacher" else _pct(r.rel_wer, signed=True), f"{r.rtf:.4f}"] for r in rows]
    return head, body


def rich_table(rows: list[Row], title: str) -> Table:
    head, body = table_lines(rows)
    table = Table(title=title)
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i < 2 else "right")
    for line in body:
        table.add_row(*line)
    return table


def markdown(rows: list[Row], title: str) -> str:
    head, body = table_lines(rows)
    right = ["---"] * 2 + ["---:"] * (len(head) - 2)
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "| " + " | ".join(right) + " |"]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path, title: str) -> None:
    """WER against parameters (log x): the compression/accuracy trade-off at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    styles = {"teacher": ("*", "black", "teacher"), "gt": ("o", "tab:blue", "student (GT)"),
              "kd": ("^", "tab:red", "student (seq-KD)")}
    for role, (marker, color, label) in styles.items():
        picked = [r for r in rows if r.role == role]
        if picked:
            ax.scatter([r.params for r in picked], [100 * r.wer for r in picked], marker=marker,
                       color=color, s=90 if role == "teacher" else 50, label=label, zorder=3)
            for r in picked:
                ax.annotate(r.name, (r.params, 100 * r.wer), textcoords="offset points",
                            xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("WER (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(rows: list[Row], out: str | Path, title: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    (out / "report.md").write_text(markdown(rows, title))
    plot(rows, out / "report.png", title)
