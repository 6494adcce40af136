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
TOKENIZER = "tokenizer.model"   # a seqkd teacher's, copied beside the shards

# text: in the corpus's form (lower case, numbers as words, no punctuation), what students learn
# and WER is scored on; raw: a foreign teacher's own text (Whisper's, cased), null for seqkd.
# topm_ids / topm_logp (null unless labelled with --topm M): per position of the hypothesis (its
# tokens, then </s>), the teacher decoder's M most likely token ids and their log-probabilities.
HYP = pa.struct([("text", pa.string()), ("raw", pa.string()), ("tokens", pa.list_(pa.int32())),
                 ("logp", pa.float32()),
                 ("topm_ids", pa.list_(pa.list_(pa.int32()))),
                 ("topm_logp", pa.list_(pa.list_(pa.float16())))])
# ctc_topm_ids / ctc_topm_logp (null unless --topm): per encoder frame, the teacher CTC head's
# M most likely token ids (blank included) and log-probabilities, for frame-level KD.
LABEL_SCHEMA = SCHEMA.append(pa.field("hyps", pa.list_(HYP))) \
    .append(pa.field("teacher_id", pa.string())).append(pa.field("decode", pa.string())) \
    .append(pa.field("ctc_topm_ids", pa.list_(pa.list_(pa.int32())))) \
    .append(pa.field("ctc_topm_logp", pa.list_(pa.list_(pa.float16()))))
