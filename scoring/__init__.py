"""Scoring: a model (any kind of teacher, any student) decoded on a manifest and scored (WER,
CER, RTF), and the report that compares many (the paper's table, bootstrap intervals, plots).

It imports only `common/`: scoring needs no Ray, so a report or an evaluation runs anywhere a
model can decode, and `trainer/` and `services/` stay free of it.
"""
