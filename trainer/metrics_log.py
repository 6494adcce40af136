"""The Ray Train callback that writes a run's metrics.jsonl, in a module of its own.

Ray Train's controller unpickles the run's callbacks before it starts any worker, importing the
module each one is defined in. Defined beside the driver (`trainer.run`), it made the controller
import torch and the whole training stack, 2-3 s of CPU on the way to the first step; this module
imports only the standard library and Ray Train.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ray.train import UserCallback


class MetricsLog(UserCallback):
    """Appends every report to metrics.jsonl (runs in the Train controller, on the head node)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"time": time.time(), **metrics[0]}) + "\n")
