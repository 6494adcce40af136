"""Ray Train training on real espeak-ng audio: learning, checkpoints, resume, a killed worker."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from ray.train.torch import TorchTrainer
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from common.bundle import load_bundle
from common.config import ConfigError
from common.models import Seq2Seq
from seqkd.cli import main
from trainer.data import frame_budget_batches
from trainer.loop import FAIL_ENV, lr_factor
from trainer.recipe import load_recipe
from trainer.run import RunError, train, trainer_class

CONF = Path(__file__).resolve().parent.parent / "conf"

TINY = {
    "name": "tiny",
    "model": {
        "encoder": {"type": "pblstm", "hidden": 48, "layers": 2, "subsample": [2, 2], "proj": 48},
        "decoder": {"type": "lstm", "embed": 24, "hidden": 48, "att_dim": 48,
                    "att_conv_channels": 4, "att_conv_kernel": 7, "dropout": 0.1},
        "ctc_weight": 0.3, "label_smoothing": 0.1,
    },
    "tokenizer": {"model_type": "char", "vocab_size": 40},
    "optim": {"epochs": 100, "max_steps": 16, "lr": 0.003, "warmup_steps": 20, "max_frames": 3000,
              "bucket_utts": 12, "log_every": 1, "checkpoint_every": 4},
}


def write_recipe(tmp_path: Path, **optim) -> Path:
    data = json.loads(json.dumps(TINY))
    data["optim"].update(optim)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def train_losses(run: Path, repeats_allowed: bool = False) -> dict[int, float]:
    """Loss per step from metrics.jsonl. After a worker restart, the steps between the last
    checkpoint and the crash are trained (and reported) again, with the very same loss."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m["kind"] == "train":
            if m["step"] in out:
                assert repeats_allowed, f"step {m['step']} reported twice"
                assert m["loss"] == pytest.approx(out[m["step"]], rel=1e-3), m["step"]
            out[m["step"]] = m["loss"]
    return out


# -- recipes -----------------------------------------------------------------------------------

def test_unknown_key_wrong_type_and_bad_override_are_named(tmp_path):
    bad = json.loads(json.dumps(TINY))
    bad["optim"]["learning_rate"] = 0.1
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"optim\.learning_rate: unknown key"):
        load_recipe(tmp_path / "a.yaml")
    bad = json.loads(json.dumps(TINY))
    bad["model"]["encoder"]["hidden"] = "big"
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"model\.encoder\.hidden: expected an integer"):
        load_recipe(tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        load_recipe(write_recipe(tmp_path), {"optim": {"max_steps": 0}})
    assert load_recipe(write_recipe(tmp_path), {"optim": {"epochs": 3}}).optim.epochs == 3


@pytest.mark.parametrize("path", sorted(CONF.glob("*teacher*.yaml")) + sorted(CONF.glob("*student*.yaml")),
                         ids=lambda p: p.stem)
def test_every_recipe_builds_the_documented_size(path):
    """Each recipe's header states its parameter count; the model must have exactly that."""
    recipe = load_recipe(path)
    model = Seq2Seq(recipe.model, recipe.features.n_mels, recipe.tokenizer.vocab_size)
    stated = re.search(r"^# .*?([\d,.]+)([Mk]?) parameters", path.read_text(), re.M)
    assert stated, f"{path.name} does not state its parameter count"
    number, unit = float(stated.group(1).replace(",", "")), stated.group(2)
    scale = {"M": 1e6, "k": 1e3, "": 1}[unit]
    assert abs(model.num_params() - number * scale) <= 0.005 * number * scale + 0.5, model.num_params()


def test_demo_students_reach_10x_compression():
    sizes = {}
    for name in ("teacher", "student_large", "student_medium", "student_small"):
        r = load_recipe(CONF / f"{name}.yaml")
        sizes[name] = Seq2Seq(r.model, r.features.n_mels, r.tokenizer.vocab_size).num_params()
    assert sizes["teacher"] > sizes["student_large"] > sizes["student_medium"] > sizes["student_small"]
    assert sizes["teacher"] / sizes["student_small"] >= 10


# -- batching and schedule ---------------------------------------------------------------------

def test_frame_budget_batches_cover_everything_once_within_budget():
    lengths = [120, 800, 30, 450, 451, 5000, 60, 60, 700]
    batches = frame_budget_batches(lengths, 1000)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 1000
    assert [5] in batches   # longer than the budget: alone, not dropped


def test_warmup_then_inverse_sqrt():
    assert lr_factor(1, 10) == pytest.approx(0.1)
    assert lr_factor(10, 10) == pytest.approx(1.0)
    assert lr_factor(40, 10) == pytest.approx(0.5)


# -- real Ray Train ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_run(ray_local, synth_corpus, tmp_path_factory):
    """16 uninterrupted steps: the curve that resumed and restarted runs must reproduce."""
    data, _ = synth_corpus
    tmp = tmp_path_factory.mktemp("ref")
    summary = train(load_recipe(write_recipe(tmp)), data / "train", data / "dev", tmp / "run")
    return tmp / "run", summary


@pytest.mark.slow
def test_training_learns_on_real_speech(reference_run):
    run, summary = reference_run
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    steps = {m["step"]: m for m in metrics if m["kind"] == "train"}
    assert sorted(steps) == list(range(1, 17))
    # token accuracy of the attention decoder (teacher forcing) and the loss, early vs late
    acc = [sum(steps[s]["acc"] for s in group) / 3 for group in ((1, 2, 3), (14, 15, 16))]
    loss = [sum(steps[s]["att_per_token"] for s in group) / 3 for group in ((1, 2, 3), (14, 15, 16))]
    assert acc[1] > 2 * acc[0] and acc[1] > 0.1, acc
    assert loss[1] < 0.95 * loss[0], loss
    assert summary["steps"] == 16 and summary["epochs"] >= 2
    bundle = load_bundle(run / "bundle")
    assert bundle.meta["params"] == bundle.model.num_params()
    assert bundle.meta["recipe"] == "tiny" and bundle.meta["steps"] == 16
    dev = [m for m in metrics if "dev_wer" in m]
    assert len(dev) == summary["epochs"] + 1 and all(d["dev_utts"] == 6 for d in dev)
    assert bundle.meta["dev_wer"] == min(d["dev_wer"] for d in dev)   # the best bundle is kept


@pytest.mark.slow
def test_cli_resume_continues_the_same_curve_and_evaluate_scores(reference_run, synth_corpus, tmp_path,
                                                                capsys):
    data, _ = synth_corpus
    ref = train_losses(reference_run[0])
    recipe, run = write_recipe(tmp_path), tmp_path / "run"
    args = ["train", "--config", str(recipe), "--train", str(data / "train"), "--dev",
            str(data / "dev"), "--out", str(run)]
    assert main([*args, "--max-steps", "4"]) == 0
    assert sorted(train_losses(run)) == [1, 2, 3, 4]
    assert main([*args, "--max-steps", "8"]) == 2   # refuses to overwrite a run without --resume
    assert "already holds a training run" in capsys.readouterr().err
    assert main([*args, "--max-steps", "8", "--resume"]) == 0
    resumed = train_losses(run)
    assert sorted(resumed) == list(range(1, 9))
    for step in range(1, 9):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-3), step

    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(data / "test"), "--beam", "2",
                 "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"WER \d+\.\d\d% .* CER \d+\.\d\d% +params [\d,]+ +RTF \d", printed), printed
    result = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert {"wer", "cer", "params", "rtf"} <= result.keys() and result["utterances"] == 6
    hyps = (tmp_path / "eval" / "hyps.jsonl").read_text().splitlines()
    assert len(hyps) == 6 and all(json.loads(h)["ref"] for h in hyps)


@pytest.mark.slow
def test_killed_worker_restarts_from_its_checkpoint(reference_run, synth_corpus, tmp_path, monkeypatch):
    """The worker dies at step 6 (after the step-4 checkpoint); Ray Train restarts it."""
    data, _ = synth_corpus
    ref = train_losses(reference_run[0])
    monkeypatch.setenv(FAIL_ENV, "6")
    recipe = load_recipe(write_recipe(tmp_path, max_steps=8), {"scaling": {"max_failures": 1}})
    summary = train(recipe, data / "train", None, tmp_path / "run")
    assert (tmp_path / "run" / ".fault_injected").read_text() == "6"
    losses = train_losses(tmp_path / "run", repeats_allowed=True)
    assert sorted(losses) == list(range(1, 9)) and summary["steps"] == 8
    for step in range(1, 9):
        assert losses[step] == pytest.approx(ref[step], rel=1e-3), step


@pytest.mark.slow
def test_two_workers_train_together_and_a_lone_worker_runs_without_torch_distributed(
        ray_local, synth_corpus, tmp_path):
    """Peers get TorchTrainer's process group (the loop's collectives need it: each report sums
    both workers' utterances, more than one worker's half of the set); a lone CPU worker gets
    Ray Train's plain trainer, whose controller does not import torch."""
    data, _ = synth_corpus
    assert trainer_class(1, use_gpu=False) is DataParallelTrainer
    assert trainer_class(1, use_gpu=True) is TorchTrainer and trainer_class(2, False) is TorchTrainer
    # small batches, so that the two halves cut into different numbers of them: the worker with
    # more must still finish its pass (and cache it), or epoch 2 waits on its split for ever
    path = write_recipe(tmp_path, epochs=2, max_steps=None, max_frames=600)
    recipe = load_recipe(path, {"scaling": {"num_workers": 2, "cpus_per_worker": 0.5}})
    summary = train(recipe, data / "train", None, tmp_path / "run")
    reports = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in reports if m["kind"] == "train"]
    assert [m["step"] for m in steps] == list(range(1, summary["steps"] + 1)) and summary["epochs"] == 2
    per_epoch = summary["steps"] // 2
    assert 12 < sum(m["utts"] for m in steps[:per_epoch]) <= 24, steps   # each worker reads 12 of the 24
    assert load_bundle(tmp_path / "run" / "bundle").meta["steps"] == summary["steps"]


def test_resume_without_a_run_and_missing_data_are_clear(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path))
    with pytest.raises(RunError, match="nothing to resume"):
        train(recipe, tmp_path, None, tmp_path / "run", resume=True)
    with pytest.raises(ValueError, match="no manifest shards"):
        train(recipe, tmp_path / "nowhere", None, tmp_path / "run2")


def test_patience_stops_when_dev_wer_stops_improving(ray_local, synth_corpus, tmp_path):
    """A learning rate too small to change the model: dev WER is the same every epoch, so with
    patience 2 the run stops after epoch 3 (best at 1, no better at 2 and 3), not after 50."""
    data, _ = synth_corpus
    recipe = load_recipe(write_recipe(tmp_path, epochs=50, max_steps=None, lr=1e-12, patience=2,
                                      log_every=4, checkpoint_every=1000))
    summary = train(recipe, data / "train", data / "dev", tmp_path / "run")
    assert summary["stopped_early"] is True and summary["epochs"] == 3
    dev = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
           if "dev_wer" in line]
    assert [m["epoch"] for m in dev] == [1, 2, 3] and len({m["dev_wer"] for m in dev}) == 1
    assert json.loads((tmp_path / "run" / "bundle" / "meta.json").read_text())["step"] == dev[0]["step"]


@pytest.mark.slow
def test_cached_epochs_train_exactly_like_streamed_ones(reference_run, synth_corpus, tmp_path):
    """The reference run replays its first epoch's features from memory (2+ epochs in 16 steps);
    with the cache off every epoch re-decodes the FLAC: the same batches, the same loss curve."""
    data, _ = synth_corpus
    assert reference_run[1]["epochs"] >= 2
    recipe = load_recipe(write_recipe(tmp_path), {"data": {"cache_mb": 0}})
    train(recipe, data / "train", None, tmp_path / "run")
    streamed, cached = train_losses(tmp_path / "run"), train_losses(reference_run[0])
    assert sorted(streamed) == sorted(cached) == list(range(1, 17))
    for step in streamed:
        assert streamed[step] == pytest.approx(cached[step], rel=1e-3), step   # threads differ


def test_feature_cache_replays_only_a_whole_pass_within_its_bound():
    import pyarrow as pa

    from trainer.data import FeatureCache

    pools = [pa.table({"x": list(range(i, i + 100))}) for i in range(0, 500, 100)]
    cache = FeatureCache(limit_bytes=10 << 20)
    first = cache.record(iter(pools))
    assert [next(first), next(first)] == pools[:2] and not cache.ready   # a pass cut short
    assert list(cache.record(iter(pools))) == pools and cache.ready
    assert list(cache.replay()) == pools
    small = FeatureCache(limit_bytes=2 * pools[0].nbytes)
    assert list(small.record(iter(pools))) == pools and not small.ready   # over the bound: stream
    assert not FeatureCache(limit_bytes=0).ready


def test_feature_cache_prefill_reads_a_whole_pass_first_or_falls_back_to_streaming():
    import pyarrow as pa

    from trainer.data import FeatureCache

    pools = [pa.table({"x": list(range(i, i + 100))}) for i in range(0, 500, 100)]
    read = []
    cache = FeatureCache(limit_bytes=10 << 20)
    replay = cache.prefill(read.append(p) or p for p in pools)
    assert read == pools and cache.ready            # the whole pass was read before training
    assert list(replay) == pools == list(cache.replay())
    small = FeatureCache(limit_bytes=2 * pools[0].nbytes)
    read.clear()
    stream = small.prefill(read.append(p) or p for p in pools)
    assert read == pools[:3] and not small.ready    # stopped reading one pool past the bound
    assert list(stream) == pools                    # nothing lost, nothing repeated, in order
    assert list(FeatureCache(limit_bytes=0).prefill(iter(pools))) == pools


def test_shards_read_as_a_dataset_keep_every_row_in_file_order(ray_local, synth_corpus):
    """The Ray Dataset that training and labeling stream equals the shards read by pyarrow."""
    import pyarrow.parquet as pq

    from common.corpora.manifest import shard_paths
    from common.shard_dataset import read_shards

    data, _ = synth_corpus
    shards = [str(p) for p in shard_paths(data / "train")]
    assert len(shards) > 1
    rows = read_shards(shards, ["utt_id", "text"], include_paths=True).take_all()
    expected = [(r["utt_id"], r["text"], s) for s in shards
                for r in pq.read_table(s, columns=["utt_id", "text"]).to_pylist()]
    assert [(r["utt_id"], r["text"], r["path"]) for r in rows] == expected
    assert set(rows[0]) == {"utt_id", "text", "path"}
    assert ray_local.data.DataContext.get_current().use_datasource_v2   # the process's default is back


def test_started_fetches_the_first_item_ahead_and_keeps_order_and_errors():
    import threading

    from trainer.data import started

    fetched = threading.Event()

    def items():
        fetched.set()
        yield from range(5)

    it = started(items())
    assert fetched.wait(10)   # under way before anyone asked for an item
    assert list(it) == [0, 1, 2, 3, 4]
    assert list(started([])) == []

    def broken():
        raise OSError("shard gone")
        yield
    with pytest.raises(OSError, match="shard gone"):
        list(started(broken()))


def test_training_pools_are_one_chunk_each_with_every_row_in_order(ray_local):
    """Ray Data cuts a pool out of several blocks; training takes rows out of it every epoch, so
    each pool is made one contiguous chunk (12x faster to take from), rows and order unchanged."""
    import pyarrow as pa

    from trainer.data import training_pools

    blocks = [pa.table({"x": list(range(i, i + 10))}) for i in range(0, 100, 10)]
    pools = list(training_pools(ray_local.data.from_arrow(blocks).iterator(), 32))
    assert [p.num_rows for p in pools] == [32, 32, 32, 4]
    assert all(column.num_chunks == 1 for p in pools for column in p.columns)
    assert [x for p in pools for x in p.column("x").to_pylist()] == list(range(100))


def test_what_ray_processes_unpickle_imports_no_torch_and_features_are_unchanged(ray_local, synth_corpus,
                                                                                tmp_path):
    """Ray Train's dataset manager unpickles the plan only to hand out iterators, and its controller
    the run's context (config, callbacks) before it starts the worker: neither may import torch
    for it (1.5 and 2-3 s of CPU before a run's first batch). The rows are unchanged."""
    import subprocess
    import sys

    from ray import cloudpickle

    from common.corpora.manifest import read_table, shard_paths
    from trainer.data import PseudoLabels, feature_dataset, featurize
    from trainer.distill import SequenceKD
    from trainer.run import RunPaths, make_front_end, make_trainer

    data, _ = synth_corpus
    shards = shard_paths(data / "train")
    front = make_front_end(load_recipe("conf/student_small.yaml"), shards, RunPaths(tmp_path))
    recipe = load_recipe(write_recipe(tmp_path))
    run_context = make_trainer(recipe, RunPaths(tmp_path / "run"), front, shards, data / "dev",
                               PseudoLabels(k=2), SequenceKD(word_kd=0.5)).train_run_context
    assert run_context.train_loop_config["parts"] is not None and run_context.run_config.callbacks
    sent = [feature_dataset([str(shards[0])], front, pseudo) for pseudo in (None, PseudoLabels(k=2, max_wer=0.5))]
    for obj in [*sent, run_context]:
        probe = ("import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); "
                 "ray.cloudpickle.loads(sys.stdin.buffer.read()); print('torch' in sys.modules)")
        done = subprocess.run([sys.executable, "-c", probe, ray_local.get_runtime_context().gcs_address],
                              input=cloudpickle.dumps(obj), capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert done.stdout.decode().split()[-1] == "False", type(obj)
    streamed = feature_dataset([str(p) for p in shards], front).take_all()
    direct = featurize(read_table(data / "train", ["utt_id", "audio", "text"]), front).to_pylist()
    assert [r["utt_id"] for r in streamed] == [r["utt_id"] for r in direct]
    assert all(s["feats"] == d["feats"] and list(s["tokens"]) == d["tokens"] for s, d in zip(streamed, direct))
