"""The console speaks for seqkd: Ray's own output goes to a log file (seqkd.console), `--verbose`
shows it live, and an error from Ray ends a command in one line that names the log."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from seqkd import console
from tests.conftest import seqkd
from tests.test_trainer import write_recipe

# What Ray says in a driver: its actors' and workers' lines, its log format, its internals by name.
RAY_INTERNALS = re.compile(
    r"TrainController|PlacementGroupCleaner|RayTrainWorker|SplitCoordinator|core_worker|logging_progress"
    r"|TrainingReport|Started a local Ray instance|\(\w[^()\s]* pid=\d+|\(pid=\d+\)"
    r"|\d\d:\d\d:\d\d,\d{3}\s+(DEBUG|INFO|WARNING|ERROR) \S+\.py:\d+ --")


def _worker_batch(line: str) -> dict:
    """A batch of worker output as Ray's log subscriber hands it to the driver's printer."""
    return {"pid": 4242, "ip": "10.0.0.1", "localhost": "10.0.0.1", "is_err": True,
            "actor_name": "TrainController", "lines": [line]}


def test_ray_output_goes_to_the_log_and_the_terminal_is_restored(tmp_path, capfd):
    from ray._private import worker

    log = tmp_path / "run" / "ray.log"
    ray_handlers, stdout = list(logging.getLogger("ray").handlers), sys.stdout

    def command() -> int:
        print("ours: before Ray")
        console.begin()
        print("ours: a progress line")
        logging.getLogger("ray").warning("ray: a driver log line")
        logging.getLogger("ray.data").warning("ray.data: a progress table")
        os.write(2, b"core_worker.cc: written straight to fd 2\n")
        warnings.warn_explicit("ray: a library warning", UserWarning, "/x/site-packages/ray/data/y.py", 1)
        worker.print_to_stdstream(_worker_batch("ray: a worker line"), ignore_prefix=False)
        return 0

    assert console.run("seqkd test", command, lambda: log, verbose=False) == 0
    os.write(2, b"after: fd 2 is the terminal again\n")
    out, err = capfd.readouterr()
    shown = out + err
    for ours in ("ours: before Ray", "ours: a progress line",
                 f"seqkd test: Ray's output goes to {log}", "after: fd 2 is the terminal again"):
        assert ours in shown
    written = log.read_text()
    for theirs in ("ray: a driver log line", "ray.data: a progress table", "core_worker.cc: written straight",
                   "ray: a library warning", "(TrainController pid=4242) ray: a worker line"):
        assert theirs in written and theirs not in shown, theirs
    assert "\x1b[" not in written   # no colour codes in a file
    assert logging.getLogger("ray").handlers == ray_handlers and sys.stdout is stdout
    assert worker.print_to_stdstream.__module__ == "ray._private.worker"


def test_an_error_after_ray_started_is_one_line_naming_the_log(tmp_path, capfd):
    log = tmp_path / "ray.log"

    def command() -> int:
        console.begin()
        raise RuntimeError("Training failed due to worker errors:\nTraceback (most recent call last):\n"
                           "  File \"loop.py\", line 1\nValueError: the cause, in its last line")

    assert console.run("seqkd train", command, lambda: log, verbose=False) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1] == f"seqkd train: ValueError: the cause, in its last line (details in {log})"
    assert "Traceback" in log.read_text() and "RuntimeError" in log.read_text()


def test_verbose_and_errors_before_ray_redirect_nothing(tmp_path, capfd):
    log = tmp_path / "ray.log"

    def command() -> int:
        console.begin()
        os.write(2, b"core_worker.cc: live\n")
        return 0

    assert console.run("seqkd train", command, lambda: log, verbose=True) == 0
    assert "core_worker.cc: live" in capfd.readouterr().err and not log.exists()
    with pytest.raises(ValueError):   # before Ray: an ordinary error of the command, nothing logged
        console.run("seqkd train", lambda: int("x"), lambda: log, verbose=False)
    assert not log.exists()


# -- the real commands, as subprocesses ------------------------------------------------------------

@pytest.fixture(scope="module")
def commands(synth_corpus, tiny_bundle, tmp_path_factory):
    """`seqkd train` (4 steps of a tiny recipe) and `seqkd label` (the dev split), by output dir."""
    data = synth_corpus[0]
    recipe = write_recipe(tmp_path_factory.mktemp("recipe"), max_steps=4)
    return {
        "train": lambda out: ["train", "--config", str(recipe), "--train", str(data / "train"),
                              "--out", str(out), "--num-cpus", "2"],
        "label": lambda out: ["label", str(tiny_bundle[0]), "--data", str(data / "dev"), "--out", str(out),
                              "--beam", "2", "--nbest", "1", "--topm", "0"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("command, ours, theirs", [
    ("train", r'^\{"steps": 4, ', ("Started a local Ray instance", "TrainController", "TrainingReport")),
    ("label", r"^labelled 6 utts ", ("Started a local Ray instance", "logging_progress", "execution finished")),
])
def test_the_console_holds_our_lines_and_the_log_holds_rays(commands, tmp_path, command, ours, theirs):
    out = tmp_path / "out"
    done = seqkd(*commands[command](out), timeout=900)
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown[-3000:]
    assert re.search(ours, done.stdout, re.M), shown
    assert shown.count("ray.log") == 1 and f"Ray's output goes to {out / 'ray.log'}" in done.stderr
    leaked = RAY_INTERNALS.search(shown)
    assert leaked is None, f"Ray's line on the console: {leaked.group(0)!r} in\n{shown}"
    log = (out / "ray.log").read_text()
    for line in theirs:
        assert line in log, line


@pytest.mark.slow
@pytest.mark.parametrize("command, theirs", [("train", "TrainController"), ("label", "execution finished")])
def test_verbose_shows_rays_lines_live(commands, tmp_path, command, theirs):
    out = tmp_path / "out"
    done = seqkd(*commands[command](out), "--verbose", timeout=900)
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown[-3000:]
    assert "Started a local Ray instance" in shown and theirs in shown
    assert not (out / "ray.log").exists() and "ray.log" not in shown


@pytest.mark.slow
def test_a_failed_training_run_ends_in_one_line_naming_the_log(commands, tmp_path):
    from trainer.loop import FAIL_ENV

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "seqkd.cli", *commands["train"](out)], capture_output=True,
                          text=True, timeout=900, env={**os.environ, FAIL_ENV: "2"})   # no restarts allowed
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("seqkd train: ") and last.endswith(f"(details in {out / 'ray.log'})"), last
    assert "Traceback" not in done.stdout + done.stderr
    assert "Traceback" in (out / "ray.log").read_text()
    assert '"steps"' not in done.stdout   # no summary
