"""The ASR library of seqkd: audio, features, tokenizer, models, beam search, bundles, teachers.

No Ray Serve and no Ray Train, so that the Serve app, the Data job and the Train loop all share
one implementation of every numeric step; its one use of Ray is `shard_dataset.py`, which reads
manifest and label shards as a Ray Dataset for labeling and training alike.
"""
