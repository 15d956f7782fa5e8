"""A few cases of a real MSD task (``../shared/data``), symlinked into a new MSD-layout folder for tests."""
from __future__ import annotations

import json
import os
from pathlib import Path


def msd_subset(source: Path, root: Path, n: int) -> Path:
    """The first ``n`` training cases of the MSD task at ``source``, under ``root/msd/<task>``."""
    msd = root / "msd" / source.name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (msd / sub).mkdir(parents=True)
    dj = json.loads((source / "dataset.json").read_text())
    training = sorted(dj["training"], key=lambda e: e["image"])[:n]
    for entry in training:
        for key, sub in (("image", "imagesTr"), ("label", "labelsTr")):
            name = Path(entry[key]).name
            os.symlink(source / sub / name, msd / sub / name)
    dj.update(training=training, numTraining=len(training), test=[], numTest=0)
    (msd / "dataset.json").write_text(json.dumps(dj))
    return msd
