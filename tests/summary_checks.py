"""What every evaluation summary of the slow tests must hold, whatever the (short) training reached: one per-case
entry per expected case, and every asked-for metric present and finite, per case and in the mean. A run where
the scores are all None or NaN, or where a case was silently left out, fails here; ``0 <= Dice <= 1`` alone would
not notice either."""
from __future__ import annotations

import math
import os
from typing import Iterable, Sequence


def case_of(path: str, file_ending: str = ".nii.gz") -> str:
    name = os.path.basename(path)
    assert name.endswith(file_ending), path
    return name[:-len(file_ending)]


def check_summary(summary: dict, cases: Iterable[str], labels: Sequence[str] = ("1", "2"),
                  metrics: Sequence[str] = ("Dice",)) -> None:
    """``summary``: nnU-Net's ``summary.json`` (``metric_per_case``, ``mean``), as ``nnUNetv2_train``'s validation
    and ``sam3d-nnunet evaluate`` write it; ``cases``: the case ids it must score, no more, no fewer."""
    per_case = summary["metric_per_case"]
    scored = sorted(case_of(entry["prediction_file"]) for entry in per_case)
    assert scored == sorted(cases), f"summary scores {scored}, expected {sorted(cases)}"
    assert sorted(case_of(entry["reference_file"]) for entry in per_case) == scored
    for entry in per_case:
        for label in labels:
            for metric in metrics:
                value = entry["metrics"][label][metric]
                assert _finite_fraction(value), (case_of(entry["prediction_file"]), label, metric, value)
    for label in labels:
        for metric in metrics:
            assert _finite_fraction(summary["mean"][label][metric]), ("mean", label, metric,
                                                                     summary["mean"][label][metric])


def _finite_fraction(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        0.0 <= value <= 1.0
