"""The training data path: manifest shards -> Ray Dataset -> features on CPU -> length buckets.

Decoding FLAC and computing filterbanks run as Ray Data `map_batches` tasks on the
cluster's CPUs, streamed, so they overlap with the training step and a corpus is never
held in memory whole. On the worker, a pool of utterances is sorted by length and cut into
batches under a frame budget (longest x count <= max_frames): little padding, and a batch
of short utterances holds more of them than a batch of long ones.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import random
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow as pa
import ray
import torch

from common.audio import AudioError, AudioLimits, load_audio
from common.features import CMVN, FeatureConfig, FeatureExtractor
from common.labels import (CTC_TOPM_IDS, CTC_TOPM_LOGP, HYP_LOGP, HYP_TEXT, HYP_TOKENS, HYP_TOPM_IDS,
                           HYP_TOPM_LOGP, HYPS)
from common.metrics import utterance_wer
from common.text import target_text
from common.tokenizer import Tokenizer

log = logging.getLogger(__name__)

FEATURE_SCHEMA = pa.schema([
    ("utt_id", pa.string()), ("text", pa.string()), ("feats", pa.binary()),
    ("n_frames", pa.int32()), ("tokens", pa.list_(pa.int32())),
])
# Pseudo-labelled rows also carry the teacher's kept hypotheses (token ids, log-probabilities).
KD_FEATURE_SCHEMA = FEATURE_SCHEMA.append(pa.field("hyp_tokens", pa.list_(pa.list_(pa.int32())))) \
    .append(pa.field("hyp_logp", pa.list_(pa.float32())))
# ... and for word-level KD the teacher's top-M per position of each kept hypothesis.
SOFT_FEATURE_SCHEMA = KD_FEATURE_SCHEMA \
    .append(pa.field("hyp_topm_ids", pa.list_(pa.list_(pa.list_(pa.int32()))))) \
    .append(pa.field("hyp_topm_logp", pa.list_(pa.list_(pa.list_(pa.float16()))))) \
    .append(pa.field("ctc_topm_ids", pa.list_(pa.list_(pa.int32())))) \
    .append(pa.field("ctc_topm_logp", pa.list_(pa.list_(pa.float16()))))


@dataclass(frozen=True)
class PseudoLabels:
    """Which of the teacher's hypotheses a student learns: the top `k`, minus those whose WER
    against the transcript exceeds `max_wer` (distil-whisper's filter for hallucinations).

    The filter needs a transcript; utterances without one keep their top k unfiltered, which is
    what makes KD useful on untranscribed audio. `soft` also keeps the teacher's top-M
    distributions along each kept hypothesis (word-level KD). `retokenize`: the hypotheses are
    a teacher's of another vocabulary (Whisper), so the student learns their text in its own
    tokens rather than the teacher's ids.
    """

    k: int = 5
    max_wer: float | None = None
    soft: bool = False
    retokenize: bool = False

    def select(self, transcript: str, hyps: list[dict]) -> list[dict]:
        kept = [h for h in hyps[: self.k] if (h[HYP_TEXT].strip() if self.retokenize else h[HYP_TOKENS])]
        if self.max_wer is not None and transcript:
            kept = [h for h in kept if utterance_wer(transcript, h["text"]) <= self.max_wer]
        return kept


@dataclass(frozen=True)
class FrontEnd:
    """Everything a preprocessing task needs, as plain data (cheap to ship to Ray tasks)."""

    tokenizer_proto: bytes
    features: FeatureConfig
    cmvn_mean: tuple[float, ...]
    cmvn_std: tuple[float, ...]
    remove_non_language: bool = True
    max_duration_s: float = 30.0

    @classmethod
    def from_dict(cls, fields: dict) -> "FrontEnd":
        """The inverse of `dataclasses.asdict`."""
        return cls(**{**fields, "features": FeatureConfig(**fields["features"])})

    def extractor(self) -> FeatureExtractor:
        return FeatureExtractor(self.features, CMVN(torch.tensor(self.cmvn_mean),
                                                    torch.tensor(self.cmvn_std)))

    def target_text(self, text: str) -> str:
        return target_text(text, self.remove_non_language)


@functools.lru_cache(maxsize=4)
def _tokenizer(digest: str, proto: bytes) -> Tokenizer:
    """One Tokenizer per process and model (keyed by digest: protos are large keys)."""
    return Tokenizer(proto)


def tokenizer_of(front: FrontEnd) -> Tokenizer:
    return _tokenizer(hashlib.sha1(front.tokenizer_proto).hexdigest(), front.tokenizer_proto)


def featurize(table: pa.Table, front: FrontEnd, pseudo: PseudoLabels | None = None) -> pa.Table:
    """Manifest rows -> (utt_id, normalised text, CMVN'd fbank bytes, n_frames, token ids).

    With `pseudo`, pseudo-label rows -> the same plus the kept hypotheses; the transcript may
    then be empty. Rows that cannot train (undecodable audio, too long, no transcript or no kept
    hypothesis) are dropped with a one-line warning each, so one bad utterance does not stop a
    run of many hours.
    """
    extractor, tok = front.extractor(), tokenizer_of(front)
    limits = AudioLimits(max_duration_s=front.max_duration_s)
    schema = FEATURE_SCHEMA if pseudo is None else SOFT_FEATURE_SCHEMA if pseudo.soft else KD_FEATURE_SCHEMA
    rows: dict[str, list] = {name: [] for name in schema.names}
    all_hyps = table.column(HYPS).to_pylist() if pseudo is not None else [None] * table.num_rows
    soft = pseudo is not None and pseudo.soft
    ctc_ids = table.column(CTC_TOPM_IDS).to_pylist() if soft else [None] * table.num_rows
    ctc_lps = table.column(CTC_TOPM_LOGP).to_pylist() if soft else [None] * table.num_rows
    for utt_id, audio, text, hyps, c_ids, c_lps in zip(table.column("utt_id").to_pylist(),
                                                       table.column("audio").to_pylist(),
                                                       table.column("text").to_pylist(), all_hyps,
                                                       ctc_ids, ctc_lps):
        target = front.target_text(text or "")
        if pseudo is None and not target:
            log.warning("skipping %s: empty transcript", utt_id)
            continue
        if pseudo is not None:
            hyps = pseudo.select(target, hyps or [])
            if not hyps:
                log.warning("skipping %s: no teacher hypothesis kept (k=%d, max_wer=%s)", utt_id,
                            pseudo.k, pseudo.max_wer)
                continue
        try:
            wave = load_audio(audio, limits, front.features.sample_rate)
        except AudioError as exc:
            log.warning("skipping %s: %s", utt_id, exc)
            continue
        feats = extractor(wave).numpy().astype(np.float32)
        rows["utt_id"].append(utt_id)
        rows["text"].append(target)
        rows["feats"].append(feats.tobytes())
        rows["n_frames"].append(feats.shape[0])
        rows["tokens"].append(tok.encode(target))
        if pseudo is not None:
            rows["hyp_tokens"].append([tok.encode(front.target_text(h[HYP_TEXT])) if pseudo.retokenize
                                       else h[HYP_TOKENS] for h in hyps])
            rows["hyp_logp"].append([h[HYP_LOGP] for h in hyps])
            if pseudo.soft:
                if c_ids is None or any(h.get(HYP_TOPM_IDS) is None for h in hyps):
                    raise ValueError(f"{utt_id}: the labels hold no top-M distributions for "
                                     f"word-level KD (label with `seqkd label --topm M`)")
                rows["hyp_topm_ids"].append([h[HYP_TOPM_IDS] for h in hyps])
                rows["hyp_topm_logp"].append([h[HYP_TOPM_LOGP] for h in hyps])
                rows["ctc_topm_ids"].append(c_ids)
                rows["ctc_topm_logp"].append(c_lps)
    return pa.Table.from_pydict(rows, schema=schema)


def feature_dataset(paths: list[str], front: FrontEnd, pseudo: PseudoLabels | None = None,
                    concurrency: int | None = None):
    """A streamed Ray Dataset of featurised utterances (with hypotheses, for `pseudo`), in order.
    Its plan holds `featurize_task` and plain dicts, which unpickle without torch."""
    from common.shard_dataset import read_shards
    from trainer.featurize_task import featurize_task

    columns = ["utt_id", "audio", "text"] + ([HYPS] if pseudo is not None else []) \
        + ([CTC_TOPM_IDS, CTC_TOPM_LOGP] if pseudo is not None and pseudo.soft else [])
    kwargs = {"front": asdict(front), "pseudo": None if pseudo is None else asdict(pseudo)}
    return read_shards(paths, columns).map_batches(
        featurize_task, fn_kwargs=kwargs, batch_format="pyarrow", batch_size=32, concurrency=concurrency)


def training_pools(shard, bucket_utts: int) -> Iterator[pa.Table]:
    """One pass over a worker's shard of the training set, `bucket_utts` utterances a pool.

    Each pool is made one contiguous Arrow chunk: Ray Data hands it over as the dozen blocks it
    was cut from, and taking a batch's rows out of 12 chunks took 2.9 ms against 0.23 ms out of
    one, 0.28 s of every cached epoch on the demo (measured), paid again by every later epoch."""
    stream = shard.iter_batches(batch_size=bucket_utts, batch_format="pyarrow", prefetch_batches=2)
    return (pool.combine_chunks() for pool in stream)


def warm_up_featurizer() -> None:
    """Start, now, the process that this worker's Ray Data tasks will read and featurise in.

    A training worker's tasks never ran in the idle workers Ray starts with (its runtime
    environment is Ray Train's, not the job's), so the first read waited for a new process to
    start and import torch. Asked for at the top of the loop, that happens while the worker builds
    its model and Ray Data plans the read, and the tasks then reuse the process: the first pool
    came 1.2 s sooner on 2 cores (6.0-6.3 s after the loop began, from 7.2-7.5 s; measured).
    """
    _import_featurizer.remote()


@ray.remote(num_cpus=1)   # what a featurising task asks for, so that it runs where they will
def _import_featurizer() -> None:
    import ray.data  # noqa: F401
    import trainer.data  # noqa: F401


@dataclass
class Batch:
    utt_ids: list[str]
    texts: list[str]
    feats: torch.Tensor            # (B, T, F)
    lens: torch.Tensor             # (B,)
    targets: list[list[int]]                     # transcript tokens ([] where there is none)
    hyps: list[list[list[int]]] | None = None    # teacher hypotheses per utterance (KD rows)
    hyp_logps: list[list[float]] | None = None
    # per utterance, per hypothesis: (top-M ids, top-M log-probs), each per position x M
    hyp_topm: list[list[tuple[list[list[int]], list[list[float]]]]] | None = None
    ctc_topm: list[tuple[list[list[int]], list[list[float]]]] | None = None   # per utterance, per frame

    @property
    def frames(self) -> int:
        return int(self.lens.sum())

    def only_hypothesis(self, j: int) -> "Batch":
        """The batch with hypothesis j of each utterance as its only target (`--expand`)."""
        assert self.hyps is not None and self.hyp_logps is not None
        return replace(self, hyps=[[h[j]] for h in self.hyps], hyp_logps=[[lp[j]] for lp in self.hyp_logps],
                       hyp_topm=None if self.hyp_topm is None else [[t[j]] for t in self.hyp_topm])


def collate(rows: pa.Table, n_mels: int) -> Batch:
    frames = rows.column("n_frames").to_pylist()
    feats = torch.zeros(len(frames), max(frames), n_mels)
    for i, (blob, n) in enumerate(zip(rows.column("feats").to_pylist(), frames)):
        feats[i, :n] = torch.frombuffer(bytearray(blob), dtype=torch.float32).view(n, n_mels)
    kd = "hyp_tokens" in rows.column_names
    soft = "hyp_topm_ids" in rows.column_names
    topm = [list(zip(ids, lps)) for ids, lps in zip(rows.column("hyp_topm_ids").to_pylist(),
                                                    rows.column("hyp_topm_logp").to_pylist())] \
        if soft else None
    return Batch(utt_ids=rows.column("utt_id").to_pylist(), texts=rows.column("text").to_pylist(),
                 feats=feats, lens=torch.tensor(frames, dtype=torch.long),
                 targets=rows.column("tokens").to_pylist(),
                 hyps=rows.column("hyp_tokens").to_pylist() if kd else None,
                 hyp_logps=rows.column("hyp_logp").to_pylist() if kd else None, hyp_topm=topm,
                 ctc_topm=list(zip(rows.column("ctc_topm_ids").to_pylist(),
                                   rows.column("ctc_topm_logp").to_pylist())) if soft else None)


def frame_budget_batches(n_frames: list[int], max_frames: int) -> list[list[int]]:
    """Indices sorted by length, cut so that (longest x count) <= max_frames (at least one each)."""
    order = sorted(range(len(n_frames)), key=lambda i: n_frames[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and n_frames[i] * (len(current) + 1) > max_frames:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def started(items: Iterable) -> Iterator:
    """`items`, whose first item is already being fetched on a thread while the caller goes on.

    A worker's first pass starts Ray Data's pipeline (its split coordinator actor, read tasks,
    featurising): about 9 s on a 2-core node before the first pool, measured, on top of the 2 s
    the worker spends building its model and optimizer. Asked for before those are built, the
    first pool is under way while they are."""
    it, end = iter(items), object()
    pool = ThreadPoolExecutor(1, thread_name_prefix="first-pool")
    first = pool.submit(next, it, end)
    pool.shutdown(wait=False)   # its one thread ends with that one call

    def chained() -> Iterator:
        item = first.result()
        if item is not end:
            yield item
            yield from it
    return chained()


class FeatureCache:
    """The featurised pools of one epoch, kept in the worker's memory and replayed by later epochs,
    so that FLAC decoding and filterbanks run once per run instead of once per epoch.

    A pass is recorded as it streams; only a whole pass (the stream ran out) is replayed, so an
    epoch cut short (max_steps) or a corpus over `limit_bytes` keeps streaming (bounded memory).
    The replayed pools are the very tables the stream yielded, in the same order, so the batches
    and the loss curve are those of streaming.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.pools: list[pa.Table] | None = None
        self.too_big = limit_bytes <= 0

    @property
    def ready(self) -> bool:
        return self.pools is not None

    def replay(self) -> Iterator[pa.Table]:
        assert self.pools is not None
        return iter(self.pools)

    def record(self, stream: Iterable[pa.Table]) -> Iterator[pa.Table]:
        """Yield the stream's pools while keeping them; a whole pass becomes the cache."""
        kept: list[pa.Table] = []
        for pool in stream:
            if not self.too_big and self._fits(kept, pool):
                kept.append(pool)
            yield pool
        if not self.too_big:
            self.pools = kept

    def prefill(self, stream: Iterable[pa.Table]) -> Iterator[pa.Table]:
        """Read the whole pass into the cache before any of it is trained on (`ready` after).

        Over the limit, the pools read so far and the rest of the stream are yielded instead,
        streaming, with no more than the limit held."""
        if self.too_big:
            return iter(stream)
        stream, kept = iter(stream), []
        for pool in stream:
            if not self._fits(kept, pool):
                return itertools.chain(kept, [pool], stream)
            kept.append(pool)
        self.pools = kept
        return self.replay()

    def _fits(self, kept: list[pa.Table], pool: pa.Table) -> bool:
        """Whether `pool` can join `kept` within the limit; if not, the cache gives up for good."""
        if sum(p.nbytes for p in kept) + pool.nbytes <= self.limit:
            return True
        self.too_big = True
        log.warning("featurised epoch exceeds data.cache_mb (%d MB): streaming every epoch",
                    self.limit >> 20)
        return False


def bucketed(pools: Iterable[pa.Table], max_frames: int, n_mels: int,
             rng: random.Random | None) -> Iterator[Batch]:
    """Each pool of utterances -> frame-budget batches in a seeded random order (shortest
    first without `rng`)."""
    for pool in pools:
        batches = frame_budget_batches(pool.column("n_frames").to_pylist(), max_frames)
        if rng is not None:
            rng.shuffle(batches)
        for idx in batches:
            yield collate(pool.take(idx), n_mels)


def expanded(pools: Iterable[pa.Table], max_frames: int, n_mels: int,
             rng: random.Random | None) -> Iterator[Batch]:
    """The paper's protocol: each kept hypothesis is its own training example.

    Pass j of a pool holds hypothesis j of every utterance that has one, cut into frame-budget
    batches; the batches of all passes are shuffled together, so an epoch is k x utterances and
    a batch never holds two hypotheses of one utterance (without `rng`, all passes' batches
    run shortest first). The features are not copied.
    """
    for pool in pools:
        counts = [len(h) for h in pool.column("hyp_tokens").to_pylist()]
        frames = pool.column("n_frames").to_pylist()
        batches = []
        for j in range(max(counts, default=0)):
            have = [i for i, c in enumerate(counts) if c > j]
            batches += [(j, [have[b] for b in idx])
                        for idx in frame_budget_batches([frames[i] for i in have], max_frames)]
        if rng is not None:
            rng.shuffle(batches)
        else:
            batches.sort(key=lambda b: frames[b[1][-1]])   # stable: pass 0 before pass 1
        for j, idx in batches:
            yield collate(pool.take(idx), n_mels).only_hypothesis(j)
