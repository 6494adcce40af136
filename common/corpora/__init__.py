"""Corpora -> manifest shards (Parquet, audio embedded as FLAC): the input of every stage."""
