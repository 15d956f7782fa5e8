"""Atomic file writing: the one implementation every writer of this package uses.

A file is written under a temporary name in the same folder (or in a staging folder on the same file system)
and moved onto its final name with ``os.replace``, so that a reader, or a rerun that skips finished outputs,
never sees half a file under a final name; a write that fails removes its temporary file, a killed process
leaves only the temporary one behind.

Temporary names are ``.<stem>.<10 hex>.tmp<ending>``: hidden, unique, and keeping the file ending, because
writers such as SimpleITK pick the format from it (``.case_001.3f9a0c1d2e.tmp.nii.gz``,
``.checkpoint_latest.0b1c2d3e4f.tmp.pth``). :func:`remove_stale_temporaries` finds the ones a killed run left.

* :func:`atomic_path`: ``with atomic_path(path) as tmp: write(tmp)`` for any writer that takes a file name;
* :func:`write_bytes_atomic`, :func:`write_text_atomic`, :func:`save_json_atomic`;
* :func:`write_image_atomic` (a SimpleITK image), :func:`copy_file_atomic`, :func:`torch_save_atomic`,
  :func:`savefig_atomic` (a matplotlib figure).

An existing file's permission bits are kept; a new file gets the process's default (``umask``).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from typing import Iterable, Iterator, Optional, Tuple, Union

PathLike = Union[str, os.PathLike]

#: endings of more than one dot that are kept whole on the temporary name
MULTI_DOT_ENDINGS = (".nii.gz", ".seg.nrrd", ".tar.gz")


def _split_ending(name: str, ending: Optional[str]) -> Tuple[str, str]:
    if ending and name.endswith(ending) and len(name) > len(ending):
        return name[: -len(ending)], ending
    for e in MULTI_DOT_ENDINGS:
        if name.endswith(e) and len(name) > len(e):
            return name[: -len(e)], e
    return os.path.splitext(name)


def temporary_sibling(path: PathLike, ending: Optional[str] = None, folder: Optional[PathLike] = None) -> str:
    """A unique hidden name ``.<stem>.<10 hex>.tmp<ending>`` in ``path``'s folder (or in ``folder``, which must
    be on the same file system) that keeps ``path``'s ending (``ending`` overrides the guess)."""
    path = os.fspath(path)
    own_folder, name = os.path.split(path)
    stem, ext = _split_ending(name, ending)
    return os.path.join(os.fspath(folder) if folder is not None else own_folder,
                        f".{stem}.{uuid.uuid4().hex[:10]}.tmp{ext}")


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike, ending: Optional[str] = None, *, folder: Optional[PathLike] = None,
                durable: bool = False) -> Iterator[str]:
    """``with atomic_path(p) as tmp: write(tmp)``: when the block succeeds ``tmp`` is moved onto ``p`` with
    ``os.replace``; when it fails (or writes nothing) ``tmp`` is removed and the error raised.

    ``folder``: where the temporary file goes (default: ``p``'s folder, created if missing); a staging folder
    keeps temporaries out of a folder that other programs list. ``durable``: ``fsync`` the file before the
    rename (the content survives a power cut, not only a killed process)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_sibling(path, ending, folder)
    try:
        yield tmp
        if not os.path.isfile(tmp):
            raise RuntimeError(f"nothing was written to the temporary file {tmp} for {path}")
        if os.path.exists(path):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(path: PathLike, data: bytes, durable: bool = False) -> None:
    with atomic_path(path, durable=durable) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text_atomic(path: PathLike, text: str, durable: bool = False) -> None:
    """``text`` as UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def save_json_atomic(obj, path: PathLike, indent: Optional[int] = 2, durable: bool = False) -> None:
    """``obj`` as JSON (``json.dumps(obj, indent=indent)`` and a final newline), in nnU-Net's ``save_json``
    argument order."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n", durable=durable)


def write_image_atomic(image, path: PathLike, folder: Optional[PathLike] = None, compress: bool = True) -> None:
    """A ``SimpleITK.Image`` (format from ``path``'s ending, compressed by default)."""
    import SimpleITK as sitk
    with atomic_path(path, folder=folder) as tmp:
        sitk.WriteImage(image, tmp, compress)


def copy_file_atomic(source: PathLike, path: PathLike, folder: Optional[PathLike] = None) -> None:
    with atomic_path(path, folder=folder) as tmp:
        shutil.copyfile(source, tmp)


def torch_save_atomic(obj, path: PathLike) -> None:
    """``torch.save(obj, path)``."""
    import torch
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def savefig_atomic(fig, path: PathLike, **savefig_kwargs) -> None:
    """``fig.savefig(path, **savefig_kwargs)``; the format defaults to ``path``'s ending (the temporary name
    keeps it)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)


def remove_stale_temporaries(folder: PathLike, names: Union[str, Iterable[str]], min_age_s: float = 3600.0) -> int:
    """Remove the temporary files that killed writers left in ``folder`` for the outputs ``names`` (file stems,
    e.g. a case id or ``checkpoint_latest``): ``.<name>.<10 hex>.tmp*``. Only files untouched for ``min_age_s``
    seconds count as left behind: a younger one may belong to another process writing the same output right now
    (two predictions into one folder), whose rename would then fail. Returns how many were removed."""
    names = [names] if isinstance(names, str) else list(names)
    if not names or not os.path.isdir(folder):
        return 0
    pattern = re.compile(r"^\.(" + "|".join(re.escape(n) for n in names) + r")\.[0-9a-f]{10}\.tmp(\..*)?$")
    removed = 0
    for entry in os.scandir(folder):
        if pattern.match(entry.name) and entry.is_file() and time.time() - entry.stat().st_mtime >= min_age_s:
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)
                removed += 1
    return removed


__all__ = ["temporary_sibling", "atomic_path", "write_bytes_atomic", "write_text_atomic", "save_json_atomic",
           "write_image_atomic", "copy_file_atomic", "torch_save_atomic", "savefig_atomic",
           "remove_stale_temporaries"]
