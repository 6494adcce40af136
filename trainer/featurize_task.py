"""The featurising step as Ray Data ships it to other processes: plain arguments, light imports.

A dataset's plan travels with its UDF, and Ray Train's dataset manager unpickles the plans
before it hands the first worker its iterator. With `trainer.data.featurize` and its `FrontEnd`
in the plan, that process imported torch just to hold them: 1.5 s of CPU on the way to a run's
first batch (measured on 2 cores, the manager's CPU time 2.9 s -> 1.4 s). So the plan holds this
function and plain dicts, and the task that featurises imports the heavy part when it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


def featurize_task(table: "pa.Table", front: dict[str, Any], pseudo: dict[str, Any] | None) -> "pa.Table":
    """`trainer.data.featurize` of `front` and `pseudo` given as `dataclasses.asdict` dicts."""
    from trainer.data import FrontEnd, PseudoLabels, featurize

    return featurize(table, FrontEnd.from_dict(front), None if pseudo is None else PseudoLabels(**pseudo))
