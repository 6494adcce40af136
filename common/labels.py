"""The pseudo-label contract shared by the labeling job (services/) and distillation (trainer/).

A labels directory holds pseudo-label shards (every manifest column plus the columns below, one
shard per input shard), `labels.json` (teacher kind and id, decode settings, the tokenizer file's
name and sha256, shards done) and the teacher's tokenizer file: `tokenizer.model` (sentencepiece)
for a seqkd teacher, whose students speak it; `tokenizer.json` for Whisper, whose students
tokenise the hypotheses' text with their own. docs/DESIGN.md describes each field.
"""

from __future__ import annotations

import pyarrow as pa

from common.corpora.manifest import SCHEMA

INDEX = "labels.json"
# the columns a labeling job adds to every manifest column
HYPS, TEACHER_ID, DECODE, CTC_TOPM_IDS, CTC_TOPM_LOGP = "hyps", "teacher_id", "decode", "ctc_topm_ids", "ctc_topm_logp"
# the fields of one hypothesis
HYP_TEXT, HYP_RAW, HYP_TOKENS, HYP_LOGP = "text", "raw", "tokens", "logp"
HYP_TOPM_IDS, HYP_TOPM_LOGP = "topm_ids", "topm_logp"
# the decode settings (common.beam_search.BeamConfig's) that change the labels: what labels.json
# records and a resumed job must match; a setting added to BeamConfig that does not change them
# leaves every labels directory resumable
LABEL_SETTINGS = ("beam", "nbest", "ctc_weight", "length_penalty", "max_len_ratio", "ctc_candidates", "topm",
                  "ctc_window")
# a label setting added after labels.json files were written: what those were made with
LATER_SETTINGS = {"ctc_window": 0}
TOKENIZER = "tokenizer.model"   # a seqkd teacher's, copied beside the shards

# text: in the corpus's form (lower case, numbers as words, no punctuation), what students learn
# and WER is scored on; raw: a foreign teacher's own text (Whisper's, cased), null for seqkd.
# topm_ids / topm_logp (null unless labelled with --topm M): per position of the hypothesis (its
# tokens, then </s>), the teacher decoder's M most likely token ids and their log-probabilities.
HYP = pa.struct([(HYP_TEXT, pa.string()), (HYP_RAW, pa.string()), (HYP_TOKENS, pa.list_(pa.int32())),
                 (HYP_LOGP, pa.float32()),
                 (HYP_TOPM_IDS, pa.list_(pa.list_(pa.int32()))),
                 (HYP_TOPM_LOGP, pa.list_(pa.list_(pa.float16())))])
# ctc_topm_ids / ctc_topm_logp (null unless --topm): per encoder frame, the teacher CTC head's
# M most likely token ids (blank included) and log-probabilities, for frame-level KD.
LABEL_SCHEMA = SCHEMA.append(pa.field(HYPS, pa.list_(HYP))) \
    .append(pa.field(TEACHER_ID, pa.string())).append(pa.field(DECODE, pa.string())) \
    .append(pa.field(CTC_TOPM_IDS, pa.list_(pa.list_(pa.int32())))) \
    .append(pa.field(CTC_TOPM_LOGP, pa.list_(pa.list_(pa.float16()))))


def label_settings(decode) -> dict:
    """The settings of a decode configuration that labels.json records (LABEL_SETTINGS)."""
    return {name: getattr(decode, name) for name in LABEL_SETTINGS}


def same_settings(recorded: dict, settings: dict) -> bool:
    """Whether labels made with `recorded` (labels.json's) are what `settings` would make."""
    return all(recorded.get(name, LATER_SETTINGS.get(name)) == settings[name] for name in LABEL_SETTINGS)
