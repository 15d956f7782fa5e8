"""The published method's 5-fold ``split.pkl`` -> nnU-Net's ``splits_final.json``.

``split.pkl`` holds five folds, each a dict with 'train', 'val' and 'test'; each of these is either a list of
case names or (as in the reference implementation) a dict whose values are ``(image path, label path)``
pairs. Fold k's 'test' cases become nnU-Net's 'val' of fold k, its 'train' + 'val' cases nnU-Net's 'train'
(the method's 70/10/20 split gives nnU-Net 80/20 folds whose validation sets are the method's test sets).

Name -> case id: the name's last path component with its file ending (.nii.gz, .nii, .npz, ...) removed is
tried as it is, without a ``_0000`` channel suffix, as LiTS ``volume-N``/``segmentation-N`` -> ``lits_NNNN``
and as KiTS ``case_N`` -> ``case_NNNNN``; if none is a case of the raw dataset the same is tried with the
parent folder's name (``case_00012/imaging.nii.gz`` -> ``case_00012``). Names that map to no case are
errors.

The pickle is user-supplied and is loaded with a restricted unpickler that only lets builtins list, dict,
str, tuple and int through; anything else (which is how a pickle runs code) is refused.
"""
from __future__ import annotations

import builtins
import json
import os
import pickle
import re

from sam3d_nnunet.atomic import save_json_atomic

from .common import ConversionError, env_folder
from .lits import lits_case_id

NUM_FOLDS = 5
PARTS = ("train", "val", "test")
ALLOWED_GLOBALS = frozenset(("builtins", n) for n in ("list", "dict", "str", "tuple", "int"))
_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".npz", ".npy", ".pkl", ".b2nd", ".h5",
            ".tif", ".tiff", ".png")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            return getattr(builtins, name)
        raise ConversionError(f"{self._path}: refusing to load '{module}.{name}' from this pickle: only lists, "
                              f"dicts, strings, tuples and ints are allowed (unpickling anything else can run "
                              f"arbitrary code)")

    def persistent_load(self, pid):
        raise ConversionError(f"{self._path}: refusing a persistent id in this pickle")


def load_split_pickle(path: str):
    """Load a user-supplied pickle that may only contain lists, dicts, strings, tuples and ints."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except ConversionError:
        raise
    except Exception as e:  # corrupt/truncated pickle, missing file, ...
        raise ConversionError(f"{path}: cannot read the split pickle: {type(e).__name__}: {e}") from None


def _names(value, path: str, k: int, part: str) -> list[str]:
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, dict):  # reference implementation: {key: (image path, label path)}
        items = []
        for key, v in value.items():
            if isinstance(v, (list, tuple)) and v and isinstance(v[0], str):
                items.append(v[0])
            elif isinstance(v, str):
                items.append(v)
            elif isinstance(key, str):
                items.append(key)
            else:
                raise ConversionError(f"{path}: fold {k} '{part}': cannot read a case name from entry "
                                      f"{key!r}: {v!r}")
    else:
        raise ConversionError(f"{path}: fold {k} '{part}' must be a list of case names or a dict, "
                              f"got {type(value).__name__}")
    for item in items:
        if not isinstance(item, str):
            raise ConversionError(f"{path}: fold {k} '{part}': case name {item!r} is not a string")
    return items


def read_split(path: str) -> list[dict[str, list[str]]]:
    """The five folds of a split.pkl as {'train': [...], 'val': [...], 'test': [...]} of names."""
    obj = load_split_pickle(path)
    if not isinstance(obj, (list, tuple)) or len(obj) != NUM_FOLDS:
        n = len(obj) if isinstance(obj, (list, tuple)) else type(obj).__name__
        raise ConversionError(f"{path}: expected a list of {NUM_FOLDS} folds, got {n}")
    folds = []
    for k, fold in enumerate(obj):
        if not isinstance(fold, dict) or any(p not in fold for p in PARTS):
            raise ConversionError(f"{path}: fold {k} must be a dict with keys {list(PARTS)}")
        folds.append({p: _names(fold[p], path, k, p) for p in PARTS})
    return folds


def _strip_ending(name: str) -> str:
    for e in _ENDINGS:
        if name.lower().endswith(e):
            return name[: -len(e)]
    return name


def name_candidates(name: str) -> list[str]:
    """Case ids a split name may stand for, most specific first."""
    parts = [p for p in name.replace("\\", "/").split("/") if p and p != "."]
    out = []
    for component in parts[-1:] + parts[-2:-1]:
        stem = _strip_ending(component)
        out.append(stem)
        m = re.fullmatch(r"(.+)_\d{4}", stem)
        if m:
            out.append(m.group(1))
        m = re.fullmatch(r"(?:volume|segmentation)-(\d+)", stem)
        if m:
            out.append(lits_case_id(int(m.group(1))))
        m = re.fullmatch(r"case_?(\d+)", stem)
        if m:
            out.append(f"case_{int(m.group(1)):05d}")
    return list(dict.fromkeys(out))


def map_case(name: str, case_ids) -> str | None:
    for candidate in name_candidates(name):
        if candidate in case_ids:
            return candidate
    return None


def raw_case_ids(dataset_name: str) -> tuple[str, set[str]]:
    """The training case ids of a raw dataset, found the way nnU-Net finds them."""
    from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder
    folder = os.path.join(env_folder("nnUNet_raw"), dataset_name)
    if not os.path.isfile(os.path.join(folder, "dataset.json")):
        raise ConversionError(f"{folder}/dataset.json missing: convert the dataset first")
    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    if "dataset" in dataset_json:  # explicit file lists
        return folder, set(dataset_json["dataset"].keys())
    return folder, {str(i) for i in get_identifiers_from_splitted_dataset_folder(
        os.path.join(folder, "imagesTr"), dataset_json["file_ending"])}


def build_splits(folds: list[dict[str, list[str]]], case_ids, path: str) -> list[dict[str, list[str]]]:
    """Map names to case ids, validate the folds, and build nnU-Net's splits."""
    mapped = []
    for k, fold in enumerate(folds):
        where: dict[str, str] = {}
        m = {}
        for part in PARTS:
            m[part] = []
            for name in fold[part]:
                case = map_case(name, case_ids)
                if case is None:
                    raise ConversionError(f"{path}: fold {k} '{part}': case {name!r} matches no case of the raw "
                                          f"dataset (tried {name_candidates(name)})")
                if case in where:
                    if where[case] == part:
                        raise ConversionError(f"{path}: fold {k} '{part}': case {case} ({name!r}) listed twice")
                    raise ConversionError(f"{path}: fold {k}: case {case} ({name!r}) appears in both "
                                          f"'{where[case]}' and '{part}'")
                where[case] = part
                m[part].append(case)
        mapped.append(m)
    all_cases = set().union(*(set(m[p]) for m in mapped for p in PARTS))
    test_fold: dict[str, int] = {}
    for k, m in enumerate(mapped):
        missing = sorted(all_cases - set(m["train"]) - set(m["val"]) - set(m["test"]))
        if missing:
            raise ConversionError(f"{path}: fold {k} does not use case {missing[0]}"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        for case in m["test"]:
            if case in test_fold:
                raise ConversionError(f"{path}: case {case} is a test case of folds {test_fold[case]} and {k}; "
                                      f"the test sets must be disjoint")
            test_fold[case] = k
    uncovered = sorted(all_cases - set(test_fold))
    if uncovered:
        raise ConversionError(f"{path}: case {uncovered[0]} is in no fold's test set"
                              + (f" (and {len(uncovered) - 1} more)" if len(uncovered) > 1 else "")
                              + "; the test sets must cover every case")
    return [{"train": sorted(m["train"] + m["val"]), "val": sorted(m["test"])} for m in mapped]


def convert_splits(pkl_path: str, dataset_id, overwrite: bool = False) -> str:
    """Write $nnUNet_preprocessed/DatasetXXX_Name/splits_final.json from a split.pkl; returns its path."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    folds = read_split(pkl_path)
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset_id)
    except (RuntimeError, ValueError) as e:
        raise ConversionError(str(e)) from None
    raw_folder, case_ids = raw_case_ids(dataset_name)
    splits = build_splits(folds, case_ids, pkl_path)
    unused = sorted(case_ids - set(splits[0]["train"]) - set(splits[0]["val"]))
    if unused:
        print(f"note: {len(unused)} case(s) of {dataset_name} are in no fold of {pkl_path} and will not be used "
              f"(e.g. {unused[:5]})")
    out_folder = os.path.join(env_folder("nnUNet_preprocessed"), dataset_name)
    os.makedirs(out_folder, exist_ok=True)
    out = os.path.join(out_folder, "splits_final.json")
    if os.path.isfile(out):
        try:
            with open(out) as f:
                same = json.load(f) == splits
        except ValueError:
            same = False
        if same:
            print(f"{out} already holds these splits")
            return out
        if not overwrite:
            raise ConversionError(f"{out} exists with different splits; pass --overwrite to replace it")
    save_json_atomic(splits, out, indent=4)
    return out
