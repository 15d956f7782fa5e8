"""The synthetic phantom generator: nnU-Net raw layout, plausible CT values, determinism under the seed."""
from __future__ import annotations

import json

import numpy as np
import pytest

SimpleITK = pytest.importorskip("SimpleITK")

from sam3d_nnunet.phantoms import LABELS, generate_phantom_dataset, make_phantom_case  # noqa: E402


def _read(path):
    img = SimpleITK.ReadImage(str(path))
    return SimpleITK.GetArrayFromImage(img), img.GetSpacing()


def _arrays(folder, n):
    out = []
    for i in range(n):
        im, sp_im = _read(folder / "imagesTr" / f"phantoms_{i:03d}_0000.nii.gz")
        lb, sp_lb = _read(folder / "labelsTr" / f"phantoms_{i:03d}.nii.gz")
        out.append((im, lb, sp_im, sp_lb))
    return out


def test_layout_and_dataset_json(tmp_path):
    folder = generate_phantom_dataset(tmp_path, 950, "Phantoms", n_cases=3, shape=(40, 48, 44), seed=3)
    assert folder == tmp_path / "Dataset950_Phantoms"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"phantoms_{i:03d}_0000.nii.gz"
                                                                       for i in range(3)]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"phantoms_{i:03d}.nii.gz" for i in range(3)]
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "CT"}
    assert dj["labels"] == {"background": 0, "organ": 1, "tumour": 2}
    assert dj["numTraining"] == 3 and dj["file_ending"] == ".nii.gz"
    # nnU-Net reads it as a valid dataset
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    assert len(get_filenames_of_train_images_and_targets(str(folder), dj)) == 3


def test_ct_like_values_and_labels(tmp_path):
    folder = generate_phantom_dataset(tmp_path, 951, "Phantoms", n_cases=6, shape=(48, 48, 48), seed=0)
    for im, lb, _, _ in _arrays(folder, 6):
        assert im.shape == lb.shape == (48, 48, 48)
        assert im.dtype == np.int16 and lb.dtype == np.uint8
        assert set(np.unique(lb)) == {0, 1, 2}, "every case has organ and tumour"
        assert im.min() <= -900, "air around the body"
        organ, tumour = im[lb == LABELS["organ"]].mean(), im[lb == LABELS["tumour"]].mean()
        assert 35 < organ < 85
        assert abs(tumour - organ) > 25, "tumour is hyper- or hypodense against its organ"
        # the tumour lies inside an organ: the voxels around it are mostly organ
        from scipy.ndimage import binary_dilation
        ring = binary_dilation(lb == 2, iterations=1) & (lb != 2)
        assert (lb[ring] == 1).mean() > 0.5


def test_deterministic_under_seed(tmp_path):
    a = _arrays(generate_phantom_dataset(tmp_path / "a", 952, "Phantoms", 4, (48, 48, 48), seed=7), 4)
    b = _arrays(generate_phantom_dataset(tmp_path / "b", 952, "Phantoms", 4, (48, 48, 48), seed=7), 4)
    c = _arrays(generate_phantom_dataset(tmp_path / "c", 952, "Phantoms", 4, (48, 48, 48), seed=8), 4)
    for (ia, la, sa, _), (ib, lb, sb, _) in zip(a, b):
        assert np.array_equal(ia, ib) and np.array_equal(la, lb) and sa == sb
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c)), "another seed gives other cases"
    # cases differ from each other (size / position vary per case)
    assert len({x[1].tobytes() for x in a}) == 4


def test_anisotropic_spacing(tmp_path):
    folder = generate_phantom_dataset(tmp_path, 953, "Phantoms", 2, (24, 64, 64), seed=1, spacing=(2.5, 0.8, 0.8))
    for _, lb, sp_im, sp_lb in _arrays(folder, 2):
        # SimpleITK reports (x, y, z); the generator takes array order (z, y, x)
        assert sp_im == pytest.approx((0.8, 0.8, 2.5)) and sp_lb == sp_im
        assert set(np.unique(lb)) == {0, 1, 2}


def test_make_case_is_pure():
    x = make_phantom_case((32, 32, 32), (1, 1, 1), np.random.default_rng([5, 0]))
    y = make_phantom_case((32, 32, 32), (1, 1, 1), np.random.default_rng([5, 0]))
    assert all(np.array_equal(p, q) for p, q in zip(x, y))
    with pytest.raises(ValueError):
        generate_phantom_dataset("/tmp/never-written", 0, "X", 1, (8, 8, 8), 0)


def test_lookalike_lesion_phantoms_leave_which_lesion_to_the_prompt(tmp_path):
    """Two organs, each with a lesion, the two lesions apart and alike (both bright or both dark); the tumour is
    either, drawn per case."""
    from scipy.ndimage import label as connected_components

    from sam3d_nnunet.phantoms import make_lookalike_lesions_case
    bright = []
    for i in range(12):
        image, label, decoy = make_lookalike_lesions_case((32, 32, 32), (1.0, 1.0, 1.0), np.random.default_rng([0, i]),
                                                          return_decoy=True)
        tumour = label == 2
        assert 100 <= tumour.sum() <= 600 and 100 <= decoy.sum() <= 600, "tens to hundreds of voxels each"
        assert not (tumour & decoy).any() and (label[decoy] == 1).all(), "the other lesion is organ"
        assert connected_components(tumour | decoy)[1] == 2, "two lesions, apart from each other"
        t, d, organ = image[tumour].mean(), image[decoy].mean(), image[(label == 1) & ~decoy].mean()
        assert abs(t - d) < 15 and abs(t - organ) > 30, "the lesions look alike and unlike the organ"
        bright.append(bool(t > organ))
    assert 0 < sum(bright) < len(bright), "bright lesions in some cases, dark ones in others"
    image, label, decoy = make_lookalike_lesions_case((32, 32, 32), (1.0, 1.0, 1.0), np.random.default_rng([0, 0]),
                                                      return_decoy=True, alike=False)
    assert abs(image[label == 2].mean() - image[decoy].mean()) > 80, "alike=False: one bright and one dark lesion"
    folder = generate_phantom_dataset(tmp_path, 953, "Lookalike", n_cases=2, shape=(32, 32, 32), lookalike_lesions=True)
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["phantom_lookalike_lesions"] is True and "drawn at random as tumour" in dj["description"]
