"""The ASR library of seqkd: audio, features, tokenizer, models, beam search, bundles.

Knows nothing of Ray, so that the Serve app, the Data job and the Train loop all
share one implementation of every numeric step.
"""
