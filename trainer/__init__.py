"""Ray Train training: ground-truth teachers and baselines, KD students, evaluation."""
