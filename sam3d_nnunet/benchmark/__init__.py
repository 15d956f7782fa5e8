"""Cross-validation benchmark: SAM3D under seeded click protocols against nnU-Net's baseline on identical folds.

* :mod:`.protocols` — K random clicks (nested), iterative correction, automatic mode; AUC of the Dice curve;
* :mod:`.runner` — fold checks, prompted whole-volume predictions, scoring (Dice, NSD), ``results.json``;
* :mod:`.report` — ``report.md`` (the paper's table and more);
* :mod:`.plots` — PNG plots (matplotlib, Agg);
* :mod:`.budget_trainers` — short-budget trainers for CPU runs (the demo; found by nnU-Net through a shim).

Command: ``sam3d-nnunet benchmark`` (:mod:`sam3d_nnunet.commands.benchmark`).
"""
from sam3d_nnunet.benchmark.protocols import (AUTO, add_correction_clicks_native, area_under_curve,
                                              clicks_protocol_name, is_subset, iterative_protocol_name,
                                              nested_click_prompts, prompts_from_json, prompts_key, prompts_to_json)

__all__ = ["AUTO", "add_correction_clicks_native", "area_under_curve", "clicks_protocol_name", "is_subset",
           "iterative_protocol_name", "nested_click_prompts", "prompts_from_json", "prompts_key", "prompts_to_json",
           "BenchmarkConfig", "BenchmarkError", "run_benchmark"]


def __getattr__(name):  # the runner imports nnU-Net: load it only when asked for
    if name in ("BenchmarkConfig", "BenchmarkError", "run_benchmark", "BenchmarkRunner", "MethodSpec"):
        from sam3d_nnunet.benchmark import runner
        return getattr(runner, name)
    raise AttributeError(name)
