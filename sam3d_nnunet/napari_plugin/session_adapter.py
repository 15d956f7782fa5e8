"""The one place where the plug-in talks to the model: ``SessionAdapter`` around ``InteractiveSession``.

The widget calls only this adapter, so a change of the session's API changes this file alone. What the widget
needs from the session (``sam3d_nnunet.inference.session.InteractiveSession``):

* ``from_trained_model_folder(folder, folds, checkpoint_name, device)``;
* ``set_image(path)`` (the dataset's reader, as ``predict``) and ``set_image(array, spacing=(sz, sy, sx),
  origin=(x, y, z), direction=9 values)`` for a layer that has no file;
* ``add_click((z, y, x), positive, class_id)`` -> label map (raw geometry), ``add_box(corner, opposite_corner,
  positive, class_id)``, ``add_scribble(points, positive, class_id)``, ``add_lasso(points, positive, class_id)``,
  ``set_mask(mask, class_id)``, ``prompts(class_id)``, ``undo()``, ``reset(class_id)``,
  ``auto(class_id)``, ``set_class``, ``current_class``, ``clicks(class_id)``, ``can_undo``, ``label_map``,
  ``image_shape``, ``save_mask(path)``;
* ``dataset_json['labels']`` / ``classes`` (the class names and ids), ``predictor.prompted`` (a prompt-free
  model only has the automatic mode), ``predictor.trainer_name``.

Model discovery (``find_datasets``, ``find_model_folders``, ``available_folds``) follows nnU-Net's layout:
``$nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>/fold_X/checkpoint_*.pth``.

Every method that runs the model is meant to run in the widget's worker thread; ``Snapshot`` is what such a
call hands back to the GUI thread (the label map and the clicks of the class at that moment), so the GUI never
reads the session while a worker is using it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]
Click = Tuple[Tuple[float, float, float], bool]
#: a drawn prompt as the shapes layer shows it: (napari shape type, vertices (n, 3) z, y, x, positive)
Shape = Tuple[str, np.ndarray, bool]


# ============================================================================================ discovery
@dataclass(frozen=True)
class ModelFolder:
    path: str
    trainer: str
    plans: str
    configuration: str
    folds: Tuple[str, ...] = ()


def find_datasets(results_folder: Optional[PathLike]) -> List[str]:
    """``DatasetXXX_Name`` folders of an nnU-Net results folder, sorted by id (none: empty list)."""
    if not results_folder or not os.path.isdir(results_folder):
        return []
    names = [d for d in os.listdir(results_folder)
             if re.fullmatch(r"Dataset\d{3}_.+", d) and os.path.isdir(os.path.join(results_folder, d))]
    return sorted(names)


def is_model_folder(path: Optional[PathLike]) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "plans.json")) and \
        os.path.isfile(os.path.join(path, "dataset.json"))


def available_folds(model_folder: PathLike, checkpoint_name: Optional[str] = None) -> Tuple[str, ...]:
    """The ``fold_X`` names (``'0'``, ..., ``'all'``) holding a checkpoint (``checkpoint_name``, or any
    ``checkpoint_*.pth``)."""
    if not os.path.isdir(model_folder):
        return ()
    out = []
    for d in os.listdir(model_folder):
        fold_dir = os.path.join(model_folder, d)
        if not d.startswith("fold_") or not os.path.isdir(fold_dir):
            continue
        files = os.listdir(fold_dir)
        if (checkpoint_name in files) if checkpoint_name else any(re.fullmatch(r"checkpoint_.*\.pth", f)
                                                                   for f in files):
            out.append(d[len("fold_"):])
    return tuple(sorted(out, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f)))


def find_model_folders(dataset_folder: Optional[PathLike]) -> List[ModelFolder]:
    """Trained model folders ``<trainer>__<plans>__<configuration>`` of a dataset results folder (or the folder
    itself if it is one)."""
    if not dataset_folder or not os.path.isdir(dataset_folder):
        return []
    candidates = [os.fspath(dataset_folder)] if is_model_folder(dataset_folder) else \
        [os.path.join(dataset_folder, d) for d in sorted(os.listdir(dataset_folder))]
    out = []
    for path in candidates:
        parts = os.path.basename(os.path.normpath(path)).split("__")
        if len(parts) == 3 and is_model_folder(path):
            out.append(ModelFolder(path, *parts, folds=available_folds(path)))
    return out


def parse_folds(text: str) -> Tuple[Union[int, str], ...]:
    """``"0"``, ``"0,1 2"``, ``"all"`` -> (0,), (0, 1, 2), ('all',); ValueError for anything else."""
    items = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    if not items:
        raise ValueError("no fold given (e.g. 0, or 0,1,2,3,4, or all)")
    out = []
    for t in items:
        if t == "all":
            out.append("all")
        elif t.isdigit():
            out.append(int(t))
        else:
            raise ValueError(f"fold {t!r} is neither an integer nor 'all'")
    return tuple(out)


# ============================================================================================ the adapter
@dataclass
class Snapshot:
    """The session's state after an operation, taken in the worker thread."""

    label_map: Optional[np.ndarray]
    class_id: int
    clicks: List[Click] = field(default_factory=list)
    can_undo: bool = False
    message: str = ""
    shapes: List[Shape] = field(default_factory=list)
    has_mask_prompt: bool = False


def _box_rectangle(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The 4 corners of a box as a napari rectangle: on its slice for a 2D box, on its middle z slice for a 3D one."""
    flat = np.flatnonzero(hi - lo <= 1e-6)
    axis = int(flat[0]) if len(flat) else 0
    a, b = [d for d in range(3) if d != axis]
    corners = np.zeros((4, 3))
    corners[:, axis] = (lo[axis] + hi[axis]) / 2
    corners[:, a] = [lo[a], lo[a], hi[a], hi[a]]
    corners[:, b] = [lo[b], hi[b], hi[b], lo[b]]
    return corners


def prompt_shape(prompt) -> Optional[Shape]:
    """How the shapes layer shows a box (rectangle), scribble (path) or lasso (polygon); None for the others."""
    kind = getattr(prompt, "kind", "")
    if kind == "box":
        return "rectangle", _box_rectangle(prompt.lo, prompt.hi), bool(prompt.positive)
    if kind in ("scribble", "lasso"):
        return ("path" if kind == "scribble" else "polygon"), np.asarray(prompt.points, float), bool(prompt.positive)
    return None


class SessionAdapter:
    """The widget's view of ``InteractiveSession``; see the module docstring."""

    def __init__(self, session, description: str = ""):
        self.session = session
        trainer = getattr(getattr(session, "predictor", None), "trainer_name", "")
        self.description = description or trainer or type(session).__name__

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model_folder(cls, model_folder: PathLike, folds: Sequence[Union[int, str]] = (0,),
                          checkpoint_name: str = "checkpoint_final.pth", device: str = "cpu") -> "SessionAdapter":
        from sam3d_nnunet.inference import InteractiveSession

        session = InteractiveSession.from_trained_model_folder(model_folder, folds=tuple(folds),
                                                               checkpoint_name=checkpoint_name, device=device)
        folder = os.path.basename(os.path.normpath(os.fspath(model_folder)))
        dataset = os.path.basename(os.path.dirname(os.path.normpath(os.fspath(model_folder))))
        fold_text = ",".join(str(f) for f in folds)
        return cls(session, f"{dataset}/{folder} fold {fold_text} ({checkpoint_name}, {device})")

    # ------------------------------------------------------------------ the model
    @property
    def classes(self) -> Dict[int, str]:
        """Foreground class id -> name (dataset.json ``labels``)."""
        names = {}
        for name, value in self.session.dataset_json.get("labels", {}).items():
            if isinstance(value, (list, tuple)):  # region-based label: its first value identifies it
                value = value[0] if value else None
            if isinstance(value, (int, np.integer)) and int(value) in self.session.classes:
                names.setdefault(int(value), str(name))
        return {c: names.get(c, f"class {c}") for c in self.session.classes}

    @property
    def prompted(self) -> bool:
        predictor = getattr(self.session, "predictor", None)
        return bool(getattr(predictor, "prompted", True))

    @property
    def current_class(self) -> int:
        return int(self.session.current_class)

    # ------------------------------------------------------------------ image
    def set_image_file(self, path: PathLike) -> Snapshot:
        self.session.set_image(os.fspath(path))
        return self.snapshot()

    def set_image_array(self, array: np.ndarray, spacing_zyx: Sequence[float],
                        origin_xyz: Optional[Sequence[float]] = None,
                        direction: Optional[Sequence[float]] = None) -> Snapshot:
        self.session.set_image(np.asarray(array), spacing=tuple(float(s) for s in spacing_zyx),
                               origin=None if origin_xyz is None else tuple(float(o) for o in origin_xyz),
                               direction=None if direction is None else tuple(float(d) for d in direction))
        return self.snapshot()

    @property
    def has_image(self) -> bool:
        try:
            self.session.image_shape
        except ValueError:  # InferenceInputError: no image yet
            return False
        return True

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return tuple(int(s) for s in self.session.image_shape)

    # ------------------------------------------------------------------ prompts
    def set_class(self, class_id: int) -> Snapshot:
        self.session.set_class(int(class_id))
        return self.snapshot()

    def add_click(self, point_zyx: Sequence[float], positive: bool, class_id: int) -> Snapshot:
        self.session.add_click(_floats(point_zyx), positive=bool(positive), class_id=int(class_id))
        return self.snapshot()

    def add_box(self, corner_zyx: Sequence[float], opposite_corner_zyx: Sequence[float], positive: bool,
                class_id: int) -> Snapshot:
        self.session.add_box(_floats(corner_zyx), _floats(opposite_corner_zyx), positive=bool(positive),
                             class_id=int(class_id))
        return self.snapshot()

    def add_scribble(self, points_zyx, positive: bool, class_id: int) -> Snapshot:
        self.session.add_scribble([_floats(p) for p in points_zyx], positive=bool(positive), class_id=int(class_id))
        return self.snapshot()

    def add_lasso(self, points_zyx, positive: bool, class_id: int) -> Snapshot:
        self.session.add_lasso([_floats(p) for p in points_zyx], positive=bool(positive), class_id=int(class_id))
        return self.snapshot()

    def set_mask(self, mask: np.ndarray, class_id: int) -> Snapshot:
        self.session.set_mask(np.asarray(mask, dtype=np.float32), class_id=int(class_id))
        return self.snapshot()

    def auto(self, class_id: int) -> Snapshot:
        self.session.auto(class_id=int(class_id))
        return self.snapshot()

    def undo(self) -> Snapshot:
        self.session.undo()
        return self.snapshot()

    def reset(self, class_id: int) -> Snapshot:
        self.session.reset(class_id=int(class_id))
        return self.snapshot()

    def save_mask(self, path: PathLike) -> str:
        return self.session.save_mask(os.fspath(path))

    # ------------------------------------------------------------------ state
    def clicks(self, class_id: Optional[int] = None) -> List[Click]:
        return [(tuple(float(v) for v in p), bool(pos)) for p, pos in self.session.clicks(class_id)]

    def prompts(self, class_id: Optional[int] = None) -> list:
        """Every prompt of a class (``sam3d_nnunet.prompts.shapes`` objects); a session without them: none."""
        return list(self.session.prompts(class_id)) if hasattr(self.session, "prompts") else []

    def snapshot(self, message: str = "") -> Snapshot:
        """The label map (a copy, raw geometry), current class, its clicks and drawn prompts, whether it has a mask
        prompt and whether undo is possible."""
        has_image = self.has_image
        label_map = np.array(self.session.label_map, copy=True) if has_image else None
        c = self.current_class
        prompts = self.prompts(c) if has_image else []
        shapes = [s for s in map(prompt_shape, prompts) if s is not None]
        return Snapshot(label_map, c, self.clicks(c) if has_image else [],
                        bool(getattr(self.session, "can_undo", False)), message, shapes,
                        any(getattr(p, "kind", "") == "mask" for p in prompts))


def _floats(point) -> Tuple[float, ...]:
    return tuple(float(v) for v in point)


__all__ = ["ModelFolder", "find_datasets", "is_model_folder", "available_folds", "find_model_folders",
           "parse_folds", "Snapshot", "SessionAdapter", "prompt_shape"]
