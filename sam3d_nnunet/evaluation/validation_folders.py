"""Which cross-validation folder of a trained model holds what (``nnUNet_results/<dataset>/<model>/fold_X/``).

* ``validation/``: the AUTOMATIC predictions (no clicks), made by nnU-Net's own ``perform_actual_validation``
  (``nnUNetPredictor``, Gaussian sliding window, step 0.5, test-time mirroring along the trainer's
  ``inference_allowed_mirroring_axes``), i.e. what ``nnUNetv2_predict`` gives for those cases, with nnU-Net's
  ``summary.json`` (and the ``.npz`` probabilities with ``--npz``). This is the folder that
  ``nnUNetv2_find_best_configuration``, ``nnUNetv2_determine_postprocessing`` and the ensembling read, so SAM3D
  models are compared with nnU-Net's like with like.
* ``validation_clicks{N}_seed{S}/``: the PROMPTED cross-validation of a promptable SAM3D model: N seeded random
  clicks per class present in the ground truth (``case_class_seed(case, class, S)``), ``summary.json`` and the
  clicks in ``prompts.json``. N and S are the trainer's ``val_clicks_per_class`` and ``val_click_seed``.

Older versions of this package wrote the prompted predictions into ``validation/`` (with ``prompts.json`` in it).
Such an *old layout* is recognised by ``validation/prompts*.json``; :func:`migrate_old_layout` (run by the
trainer's validation, i.e. ``nnUNetv2_train ... --val``) moves it out of ``validation/`` so that nnU-Net's
automatic predictions can be written there.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Callable, List, Optional, Tuple

AUTOMATIC_FOLDER = "validation"
OLD_LAYOUT_FOLDER = "validation_old_layout"
_PROMPTED = re.compile(r"^validation_clicks(\d+)_seed(\d+)$")
# the protocol line the old trainer wrote into validation/prompts.json
_OLD_PROTOCOL = re.compile(r"^(\d+) uniformly random voxel\(s\) .*case_class_seed\(case, class, (\d+)\)")
OLD_AUTOMATIC_PROTOCOL = "automatic (no clicks)"


def prompted_folder_name(clicks_per_class: int, seed: int) -> str:
    """``validation_clicks{N}_seed{S}``."""
    return f"validation_clicks{int(clicks_per_class)}_seed{int(seed)}"


def parse_prompted_folder_name(name: str) -> Optional[Tuple[int, int]]:
    """(clicks per class, seed) of a ``validation_clicks{N}_seed{S}`` name, else None."""
    m = _PROMPTED.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def prompted_folders(fold_folder: str) -> List[Tuple[str, int, int]]:
    """The prompted validation folders of ``fold_folder``: [(name, clicks per class, seed)], sorted by clicks, seed."""
    if not os.path.isdir(fold_folder):
        return []
    found = []
    for name in os.listdir(fold_folder):
        parsed = parse_prompted_folder_name(name)
        if parsed and os.path.isdir(os.path.join(fold_folder, name)):
            found.append((name, *parsed))
    return sorted(found, key=lambda t: (t[1], t[2]))


def old_layout_files(fold_folder: str) -> List[str]:
    """``prompts*.json`` inside ``fold_folder/validation`` (the mark of the old layout); empty in the new one."""
    folder = os.path.join(fold_folder, AUTOMATIC_FOLDER)
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if f.startswith("prompts") and f.endswith(".json"))


def is_old_layout(fold_folder: str) -> bool:
    """True if ``fold_folder/validation`` holds the prompted predictions of an older sam3d_nnunet."""
    return bool(old_layout_files(fold_folder))


def old_layout_message(fold_folder: str) -> str:
    """One line saying why ``fold_folder/validation`` cannot be used as automatic predictions and what to do."""
    return (f"{os.path.join(fold_folder, AUTOMATIC_FOLDER)} holds prompted (clicked) predictions of an older "
            f"sam3d_nnunet (it contains {old_layout_files(fold_folder)[0]}), not the automatic predictions "
            f"nnUNetv2_predict gives: rerun the validation (nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER "
            f"-p PLANS --val) to rewrite it in the current layout")


def old_protocol(fold_folder: str) -> Optional[Tuple[int, int] | str]:
    """What an old-layout ``validation/`` holds, from its prompts.json: (clicks per class, seed) for prompted
    predictions, ``OLD_AUTOMATIC_PROTOCOL`` for the automatic variant's, None if unreadable."""
    files = old_layout_files(fold_folder)
    if not files:
        return None
    try:
        with open(os.path.join(fold_folder, AUTOMATIC_FOLDER, files[0])) as f:
            text = str(json.load(f).get("protocol", ""))
    except (OSError, ValueError, AttributeError):
        return None
    if text == OLD_AUTOMATIC_PROTOCOL:
        return OLD_AUTOMATIC_PROTOCOL
    m = _OLD_PROTOCOL.match(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _free_name(fold_folder: str, base: str) -> str:
    name, k = base, 1
    while os.path.exists(os.path.join(fold_folder, name)):
        k += 1
        name = f"{base}_{k}"
    return name


def migrate_old_layout(fold_folder: str, log: Callable[[str], None] = print) -> Optional[str]:
    """Move an old-layout ``validation/`` out of the way before the automatic validation is written there.

    Prompted predictions go to the folder their own protocol names (``validation_clicks{N}_seed{S}``, N and S read
    from their prompts.json), or to ``validation_old_layout[_k]`` when that name is taken or the protocol
    cannot be read; the old automatic variant's predictions (no mirroring, not nnU-Net's predictor) are deleted,
    as the new validation replaces them. Returns the folder name the old predictions now live in (None if there
    was nothing to move or they were deleted)."""
    if not is_old_layout(fold_folder):
        return None
    source = os.path.join(fold_folder, AUTOMATIC_FOLDER)
    protocol = old_protocol(fold_folder)
    if protocol == OLD_AUTOMATIC_PROTOCOL:
        shutil.rmtree(source)
        log(f"old layout: {source} held automatic predictions of an older sam3d_nnunet (no test-time mirroring); "
            f"deleted, nnU-Net's validation writes them again")
        return None
    target = prompted_folder_name(*protocol) if protocol is not None else None
    if target is None or os.path.exists(os.path.join(fold_folder, target)):
        target = _free_name(fold_folder, OLD_LAYOUT_FOLDER)
    os.rename(source, os.path.join(fold_folder, target))
    log(f"old layout: the prompted predictions in {source} were moved to {os.path.join(fold_folder, target)}; "
        f"{AUTOMATIC_FOLDER}/ now receives the automatic predictions (what nnUNetv2_predict gives)")
    return target


__all__ = ["AUTOMATIC_FOLDER", "OLD_LAYOUT_FOLDER", "is_old_layout", "migrate_old_layout", "old_layout_files",
           "old_layout_message", "old_protocol", "parse_prompted_folder_name", "prompted_folder_name",
           "prompted_folders"]
