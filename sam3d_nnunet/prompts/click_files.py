"""Prompt files ("click files"): user-supplied prompts for ``sam3d-nnunet predict --clicks PROMPTS.json``.

Version 2 holds every prompt type::

    {
      "version": 2,
      "coordinate_system": "voxel",            # or "world"
      "cases": {
        "case_001": {
          "1": [{"type": "click", "point": [x, y, z], "positive": true},
                {"type": "box", "corners": [[x, y, z], [x, y, z]], "positive": true},
                {"type": "scribble", "points": [[x, y, z], [x, y, z], ...], "positive": false},
                {"type": "lasso", "points": [[x, y, z], [x, y, z], [x, y, z], ...], "positive": true},
                {"type": "mask", "file": "masks/case_001_organ.nii.gz"}]
        }
      }
    }

* every coordinate follows ``coordinate_system`` as a click's ``point`` does (below). A box is the index-space
  box between its two corners (on a rotated image: the box of the two mapped corners); equal coordinates along
  one axis make a 2D box on that slice. A lasso lies on one slice (points within 0.01 voxel of one index plane
  are put on it). The geometric rules (inside the image, non-zero extent, >= 2 scribble points, a simple lasso
  of >= 3 points) are those of ``sam3d_nnunet.prompts.shapes``, checked against each case's image.
* a mask is an image file on the case image's voxel grid (same size), non-zero = the object (a previous
  prediction or an edited mask); a relative path is relative to the prompt file's folder.
* ``write_click_file`` writes version 1 when a file holds clicks only (every release reads it), else version 2.

Version 1, the original click-only format (no ``"version"`` key), is still read::

    {
      "coordinate_system": "voxel",            # or "world"
      "cases": {
        "case_001": {
          "1": [{"point": [x, y, z], "positive": true},
                {"point": [x, y, z], "positive": false}],
          "2": []
        }
      }
    }

* ``coordinate_system`` (required):
  - ``"voxel"``: ``point`` is the voxel index (x, y, z) = (i, j, k) of the RAW image file, in the
    order SimpleITK/ITK and image viewers (ITK-SNAP, 3D Slicer's IJK, ``image.GetPixel(x, y, z)``)
    use. NOTE this is the REVERSE of numpy's order: ``sitk.GetArrayFromImage(image)[z, y, x]``.
    Non-integer values are continuous indices (integers are voxel centres).
  - ``"world"``: ``point`` is a physical position in millimetres (x, y, z) in ITK's LPS convention,
    exactly what ``image.TransformIndexToPhysicalPoint`` returns (3D Slicer shows RAS: negate x and y).
    Origin, spacing and direction of each image are applied, so rotated/flipped/anisotropic images
    need no special care.
* ``cases`` maps a case id (the image's name without channel suffix and extension; a plain name,
  never a path: it becomes an output file name) to ``{class: [click, ...]}``.
* class keys are the dataset label values as decimal strings ("1", "2", ...; >= 1, no leading zeros).
  The model segments that class; an empty list asks for it without clicks (automatic mode).
* a click is ``{"point": [3 finite numbers], "positive": true|false}``; positive = inside the wanted
  object, negative = not part of it. No other keys are accepted (typos would otherwise be ignored).

Inside the project clicks are array-order (z, y, x) indices; ``to_array_indices`` does that mapping.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sam3d_nnunet.atomic import save_json_atomic

__all__ = [
    "COORDINATE_SYSTEMS",
    "Click",
    "ClickFile",
    "ClickFileError",
    "read_click_file",
    "write_click_file",
    "validate_case_id",
    "to_array_indices",
    "from_array_indices",
    "case_clicks_to_arrays",
    "FilePrompt",
    "FILE_PROMPT_TYPES",
    "case_prompts",
]
FILE_PROMPT_TYPES = ("click", "box", "scribble", "lasso", "mask")
_KEYS = {"click": ("point", "positive"), "box": ("corners", "positive"), "scribble": ("points", "positive"),
         "lasso": ("points", "positive"), "mask": ("file",)}
_MIN_POINTS = {"box": 2, "scribble": 2, "lasso": 3}

COORDINATE_SYSTEMS = ("voxel", "world")
_CLASS_KEY = re.compile(r"^[1-9][0-9]*$")
# half a voxel beyond the edge voxel centres, plus float slack for a world -> index round trip
_EDGE_TOL = 1e-6


class ClickFileError(ValueError):
    """A click file that does not follow the format; the message names the file and location."""


@dataclass(frozen=True)
class Click:
    """One click as written in a click file: ``point`` in the file's coordinate system (x, y, z)."""

    point: tuple[float, float, float]
    positive: bool

    def __post_init__(self) -> None:
        pt = tuple(float(v) for v in self.point)
        if len(pt) != 3 or not all(math.isfinite(v) for v in pt):
            raise ValueError(f"a click point needs 3 finite numbers, got {self.point!r}")
        object.__setattr__(self, "point", pt)
        if not isinstance(self.positive, (bool, np.bool_)):
            raise ValueError(f"'positive' must be a bool, got {self.positive!r}")
        object.__setattr__(self, "positive", bool(self.positive))


@dataclass(frozen=True)
class FilePrompt:
    """A box, scribble, lasso or mask as written in a version-2 prompt file: ``points`` in the file's coordinate
    system (x, y, z) (a box: its two corners), ``file`` the mask's image file (as written, relative paths are
    relative to the prompt file's folder)."""

    type: str
    points: tuple = ()
    positive: bool = True
    file: str | None = None

    def __post_init__(self) -> None:
        if self.type not in FILE_PROMPT_TYPES[1:]:
            raise ValueError(f"a file prompt's type is one of {list(FILE_PROMPT_TYPES[1:])}, got {self.type!r}")
        object.__setattr__(self, "points", tuple(tuple(float(v) for v in p) for p in self.points))


@dataclass
class ClickFile:
    """Parsed prompt file: ``cases[case_id][class_id] -> list of Click / FilePrompt``; ``source_dir`` the folder
    the file was read from (mask paths are relative to it)."""

    coordinate_system: str
    cases: dict[str, dict[int, list]] = field(default_factory=dict)
    source_dir: str | None = None


def validate_case_id(case_id: str) -> str:
    """Return ``case_id`` if it is a plain name; case ids become output file names, so separators,
    '..' and empty names are refused (no writing outside the output folder)."""
    if not isinstance(case_id, str) or not case_id or case_id in (".", ".."):
        raise ValueError(f"case id {case_id!r} is not a plain name")
    if "/" in case_id or "\\" in case_id or "\x00" in case_id or ".." in case_id:
        raise ValueError(f"case id {case_id!r} must not contain path separators or '..'")
    return case_id


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: duplicate keys are an error (json silently keeps the last one)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ClickFileError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _parse(data: Any, where: str) -> ClickFile:
    """Validate a decoded JSON document; ``where`` prefixes every error message."""
    def fail(msg: str) -> ClickFileError:
        return ClickFileError(f"{where}: {msg}")

    if not isinstance(data, dict):
        raise fail(f"top level must be a JSON object, got {type(data).__name__}")
    extra = set(data) - {"version", "coordinate_system", "cases"}
    if extra:
        raise fail(f"unknown top-level keys {sorted(extra)} (allowed: 'version', 'coordinate_system', 'cases')")
    version = data.get("version", 1)
    if version not in (1, 2) or isinstance(version, bool):
        raise fail(f"'version' must be 1 or 2, got {version!r} (a newer sam3d_nnunet wrote this file?)")
    if "coordinate_system" not in data:
        raise fail(f"missing 'coordinate_system' (one of {list(COORDINATE_SYSTEMS)})")
    cs = data["coordinate_system"]
    if cs not in COORDINATE_SYSTEMS:
        raise fail(f"'coordinate_system' must be one of {list(COORDINATE_SYSTEMS)}, got {cs!r}")
    if "cases" not in data:
        raise fail("missing 'cases'")
    cases_in = data["cases"]
    if not isinstance(cases_in, dict):
        raise fail(f"'cases' must be an object mapping case ids to classes, got {type(cases_in).__name__}")
    cases: dict[str, dict[int, list[Click]]] = {}
    for case_id, classes in cases_in.items():
        try:
            validate_case_id(case_id)
        except ValueError as e:
            raise fail(str(e)) from None
        if not isinstance(classes, dict):
            raise fail(f"case {case_id!r}: must be an object mapping class labels to click lists, "
                       f"got {type(classes).__name__}")
        per_class: dict[int, list[Click]] = {}
        for key, clicks in classes.items():
            loc = f"case {case_id!r}, class {key!r}"
            if not isinstance(key, str) or not _CLASS_KEY.match(key):
                raise fail(f"{loc}: class keys must be integer label values >= 1 written as decimal "
                           f"strings without leading zeros")
            if not isinstance(clicks, list):
                raise fail(f"{loc}: must be a list of clicks, got {type(clicks).__name__}")
            parsed: list = []
            for i, click in enumerate(clicks):
                if version == 2:
                    parsed.append(_parse_prompt(click, f"{loc}, prompt {i}", fail))
                    continue
                cloc = f"{loc}, click {i}"
                if not isinstance(click, dict):
                    raise fail(f"{cloc}: must be an object with 'point' and 'positive'")
                extra = set(click) - {"point", "positive"}
                if extra or "point" not in click or "positive" not in click:
                    raise fail(f"{cloc}: needs exactly the keys 'point' and 'positive', got {sorted(click)}")
                pt = click["point"]
                if not _is_point(pt):
                    raise fail(f"{cloc}: 'point' must be a list of 3 finite numbers, got {pt!r}")
                if not isinstance(click["positive"], bool):
                    raise fail(f"{cloc}: 'positive' must be true or false, got {click['positive']!r}")
                parsed.append(Click(tuple(pt), click["positive"]))
            per_class[int(key)] = parsed
        cases[case_id] = per_class
    return ClickFile(cs, cases)


def _is_point(pt: Any) -> bool:
    return (isinstance(pt, list) and len(pt) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pt)
            and all(math.isfinite(v) for v in pt))


def _parse_prompt(entry: Any, loc: str, fail) -> Click | FilePrompt:
    """One entry of a version-2 prompt list."""
    if not isinstance(entry, dict) or entry.get("type") not in FILE_PROMPT_TYPES:
        raise fail(f"{loc}: must be an object with 'type' one of {list(FILE_PROMPT_TYPES)}")
    kind = entry["type"]
    keys = ("type",) + _KEYS[kind]
    if set(entry) != set(keys):
        raise fail(f"{loc}: a {kind} needs exactly the keys {list(keys)}, got {sorted(entry)}")
    if kind == "mask":
        if not isinstance(entry["file"], str) or not entry["file"].strip():
            raise fail(f"{loc}: a mask's 'file' must be a non-empty path, got {entry['file']!r}")
        return FilePrompt("mask", file=entry["file"])
    if not isinstance(entry["positive"], bool):
        raise fail(f"{loc}: 'positive' must be true or false, got {entry['positive']!r}")
    if kind == "click":
        if not _is_point(entry["point"]):
            raise fail(f"{loc}: 'point' must be a list of 3 finite numbers, got {entry['point']!r}")
        return Click(tuple(entry["point"]), entry["positive"])
    field_name = _KEYS[kind][0]
    pts = entry[field_name]
    if not isinstance(pts, list) or not all(_is_point(p) for p in pts):
        raise fail(f"{loc}: a {kind}'s '{field_name}' must be a list of points of 3 finite numbers")
    if len(pts) < _MIN_POINTS[kind] or (kind == "box" and len(pts) != 2):
        wanted = "exactly 2" if kind == "box" else f"at least {_MIN_POINTS[kind]}"
        raise fail(f"{loc}: a {kind} needs {wanted} points, got {len(pts)}")
    return FilePrompt(kind, tuple(tuple(p) for p in pts), entry["positive"])


def read_click_file(path: str | os.PathLike) -> ClickFile:
    """Read and validate a click file; any problem raises ClickFileError naming the file and the
    case / class / click index, so a user can fix a large file without guessing."""
    where = f"click file '{os.fspath(path)}'"
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f, object_pairs_hook=_no_duplicates)
    except ClickFileError as e:
        raise ClickFileError(f"{where}: {e}") from None
    except json.JSONDecodeError as e:
        raise ClickFileError(f"{where}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ClickFileError(f"{where}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise ClickFileError(f"{where}: cannot be read ({e})") from None
    parsed = _parse(data, where)
    parsed.source_dir = os.path.dirname(os.path.abspath(os.fspath(path)))
    return parsed


def _entry_to_json(entry: Any, version: int) -> dict[str, Any]:
    if not isinstance(entry, FilePrompt):
        point, positive = (entry.point, entry.positive) if isinstance(entry, Click) else entry
        out = {"point": [float(v) for v in point], "positive": bool(positive)}
        return out if version == 1 else {"type": "click", **out}
    if entry.type == "mask":
        return {"type": "mask", "file": entry.file}
    return {"type": entry.type, _KEYS[entry.type][0]: [[float(v) for v in p] for p in entry.points],
            "positive": bool(entry.positive)}


def _to_json(click_file: ClickFile) -> dict[str, Any]:
    for case_id, classes in click_file.cases.items():
        if len({str(int(c)) for c in classes}) != len(classes):
            raise ValueError(f"case {case_id!r}: class keys {list(classes)} name the same class twice")
    version = 2 if any(isinstance(e, FilePrompt) for classes in click_file.cases.values()
                       for entries in classes.values() for e in entries) else 1
    return {
        **({"version": 2} if version == 2 else {}),
        "coordinate_system": click_file.coordinate_system,
        "cases": {
            str(case_id): {
                str(int(cls)): [_entry_to_json(c, version) for c in clicks]
                for cls, clicks in sorted(classes.items(), key=lambda kv: int(kv[0]))
            }
            for case_id, classes in click_file.cases.items()
        },
    }


def write_click_file(path: str | os.PathLike, click_file: ClickFile) -> None:
    """Write ``click_file`` as JSON, atomically (``sam3d_nnunet.atomic``: a temporary file in the same folder,
    flushed to disk, is renamed over ``path`` with os.replace), so a reader never sees half a file. The content is validated with the
    same rules as ``read_click_file`` first (clicks may be Click objects or (point, positive) pairs)."""
    path = Path(path)
    data = _to_json(click_file)
    _parse(data, f"click file '{os.fspath(path)}' (being written)")
    save_json_atomic(data, path, indent=2, durable=True)


def _image_size_xyz(image: Any) -> np.ndarray:
    size = np.asarray(image.GetSize(), dtype=np.float64)
    if size.size != 3:
        raise ValueError(f"clicks need a 3D image, got a {size.size}D image")
    return size


def to_array_indices(
    points_xyz: Sequence[Sequence[float]] | np.ndarray,
    image: Any,
    coordinate_system: str,
    *,
    case_id: str | None = None,
    class_id: int | None = None,
    what: str = "click",
    start: int = 0,
) -> np.ndarray:
    """Map click-file points to continuous indices in numpy ARRAY order (z, y, x) of
    ``sitk.GetArrayFromImage(image)``.

    "voxel" points are (x, y, z) indices and are reversed; "world" points go through
    ``image.TransformPhysicalPointToContinuousIndex`` (origin, direction and anisotropic spacing).
    A point whose continuous index lies outside [-0.5, size - 0.5] on any axis (more than half a
    voxel beyond the edge voxel centres) raises ValueError naming the case and the point.
    """
    if coordinate_system not in COORDINATE_SYSTEMS:
        raise ValueError(f"coordinate_system must be one of {list(COORDINATE_SYSTEMS)}, got {coordinate_system!r}")
    pts = np.asarray(points_xyz, dtype=np.float64)
    if pts.size == 0:
        return np.zeros((0, 3), dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be (n, 3), got shape {pts.shape}")
    size = _image_size_xyz(image)
    who = f"case {case_id!r}" if case_id is not None else "click"
    if class_id is not None:
        who += f", class {class_id}"
    out = np.empty_like(pts)
    for i, p in enumerate(pts):
        if not np.all(np.isfinite(p)):
            raise ValueError(f"{who}: point {i} {p.tolist()} is not finite")
        if coordinate_system == "world":
            idx = np.asarray(image.TransformPhysicalPointToContinuousIndex([float(v) for v in p]))
        else:
            idx = p
        if np.any(idx < -0.5 - _EDGE_TOL) or np.any(idx > size - 0.5 + _EDGE_TOL):
            unit = "mm" if coordinate_system == "world" else "voxel (x, y, z)"
            raise ValueError(
                f"{who}: {what} {start + i} at {unit} {p.tolist()} falls outside the image "
                f"(continuous index (x, y, z) {np.round(idx, 3).tolist()}, image size {size.astype(int).tolist()})")
        out[i] = idx[::-1]
    return out


def from_array_indices(indices_zyx: Sequence[Sequence[float]] | np.ndarray, image: Any,
                       coordinate_system: str) -> np.ndarray:
    """Inverse of ``to_array_indices``: array-order (z, y, x) indices to click-file points (x, y, z)
    in ``coordinate_system`` (e.g. to store simulated protocol clicks as a click file)."""
    if coordinate_system not in COORDINATE_SYSTEMS:
        raise ValueError(f"coordinate_system must be one of {list(COORDINATE_SYSTEMS)}, got {coordinate_system!r}")
    idx = np.asarray(indices_zyx, dtype=np.float64).reshape(-1, 3)[:, ::-1]
    if coordinate_system == "voxel":
        return idx.copy()
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in p]) for p in idx],
                    dtype=np.float64).reshape(-1, 3)


def case_clicks_to_arrays(click_file: ClickFile, case_id: str,
                          image: Any) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """All prompts of one case as ``{class_id: (clicks (n, 3) array-order float64, labels (n,) int64)}``
    relative to ``sitk.GetArrayFromImage(image)``; labels 1 positive, 0 negative. An unknown case
    gives an empty dict."""
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for cls, clicks in click_file.cases.get(case_id, {}).items():
        pts = [c.point for c in clicks]
        coords = to_array_indices(np.asarray(pts, dtype=np.float64).reshape(-1, 3), image,
                                  click_file.coordinate_system, case_id=case_id, class_id=int(cls))
        labels = np.array([1 if c.positive else 0 for c in clicks], dtype=np.int64)
        out[int(cls)] = (coords, labels)
    return out


def _snap_plane(points: np.ndarray, tolerance: float = 0.01) -> np.ndarray:
    """Coordinates within ``tolerance`` voxel of each other along an axis made equal (world -> index rounding)."""
    points = points.copy()
    for axis in range(3):
        if np.ptp(points[:, axis]) <= tolerance:
            points[:, axis] = points[:, axis].mean()
    return points


def case_prompts(click_file: ClickFile, case_id: str, image: Any) -> dict[int, list]:
    """Every prompt of one case as ``{class_id: [sam3d_nnunet.prompts.shapes prompt, ...]}`` in numpy ARRAY order
    (z, y, x) of ``sitk.GetArrayFromImage(image)``, each checked against the image (``validate_prompt``); masks are
    read from their files. Errors (``ValueError``) name the case, class and prompt. An unknown case: ``{}``."""
    from sam3d_nnunet.prompts.shapes import (BoxPrompt, ClickPrompt, LassoPrompt, MaskPrompt, PromptError,
                                             ScribblePrompt, validate_prompt)
    shape = tuple(int(s) for s in _image_size_xyz(image)[::-1])
    out: dict[int, list] = {}
    for cls, entries in click_file.cases.get(case_id, {}).items():
        prompts = []
        for i, entry in enumerate(entries):
            where = f"case {case_id!r}, class {int(cls)}, prompt {i}"
            kind = entry.type if isinstance(entry, FilePrompt) else "click"
            try:
                if kind == "mask":
                    prompt = MaskPrompt(_read_mask(entry.file, click_file.source_dir, shape))
                else:
                    points = entry.points if isinstance(entry, FilePrompt) else [entry.point]
                    named = {"what": "click", "start": i} if kind == "click" else {"what": f"prompt {i} ({kind}) point"}
                    pts = _snap_plane(to_array_indices(points, image, click_file.coordinate_system, case_id=case_id,
                                                       class_id=int(cls), **named))
                    prompt = {"click": lambda: ClickPrompt(pts[0], entry.positive),
                              "box": lambda: BoxPrompt(pts[0], pts[1], entry.positive),
                              "scribble": lambda: ScribblePrompt(pts, entry.positive),
                              "lasso": lambda: LassoPrompt(pts, entry.positive)}[kind]()
                prompts.append(validate_prompt(prompt, shape))
            except PromptError as e:
                raise PromptError(f"{where}: {e}") from None
        out[int(cls)] = prompts
    return out


def _read_mask(file: str, source_dir: str | None, shape: tuple) -> np.ndarray:
    import SimpleITK as sitk
    path = file if os.path.isabs(file) or source_dir is None else os.path.join(source_dir, file)
    from sam3d_nnunet.prompts.shapes import PromptError
    if not os.path.isfile(path):
        raise PromptError(f"mask: file '{path}' does not exist")
    try:
        return (sitk.GetArrayFromImage(sitk.ReadImage(path)) != 0).astype(np.float32)
    except RuntimeError as e:
        raise PromptError(f"mask: cannot read '{path}' ({str(e).strip().splitlines()[0][:200]})") from None
