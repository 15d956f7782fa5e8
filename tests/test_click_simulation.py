"""Click simulation: training prompts, correction clicks, evaluation protocol, seeds."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sam3d_nnunet.prompts.simulation import (
    add_correction_clicks,
    as_rng,
    binary_target,
    case_class_seed,
    correction_click,
    protocol_clicks,
    sample_training_prompt,
    simulate_training_prompts,
)

FG = [1, 2, 3]
IGNORE = 4


def multi_label_patch() -> np.ndarray:
    """24x20x16 patch: big class 1, small class 2, class 3 absent, an ignore-label slab."""
    lab = np.zeros((24, 20, 16), dtype=np.int16)
    lab[2:14, 3:15, 2:12] = 1
    lab[17:20, 14:17, 10:13] = 2
    lab[:, :, 14:] = IGNORE
    return lab


def _at(lab: np.ndarray, clicks: np.ndarray) -> np.ndarray:
    idx = clicks.astype(np.int64)
    assert np.array_equal(idx, clicks), "training clicks are voxel centres"
    return lab[tuple(idx.T)]


def test_positives_inside_negatives_outside_and_class_present():
    lab = multi_label_patch()
    rng = np.random.default_rng(0)
    chosen = []
    n_pos_seen = n_neg_seen = 0
    for _ in range(300):
        p = sample_training_prompt(lab, FG, rng, max_positive=5, max_negative=5, p_no_click=0.2,
                                   ignore_label=IGNORE)
        assert p.has_object and p.target_class in (1, 2)  # class 3 is absent, never chosen
        chosen.append(p.target_class)
        vals = _at(lab, p.clicks)
        pos, neg = vals[p.click_labels == 1], vals[p.click_labels == 0]
        assert np.all(pos == p.target_class)
        assert np.all(neg != p.target_class) and np.all(neg != IGNORE) and np.all(neg >= 0)
        assert set(np.unique(p.click_labels)) <= {0, 1}
        if len(p.click_labels):
            assert 1 <= len(pos) <= 5 and len(neg) <= 5
        n_pos_seen += len(pos)
        n_neg_seen += len(neg)
    # uniform over PRESENT classes, not voxel-weighted: the 27-voxel class 2 is chosen about half the time
    share2 = np.mean(np.array(chosen) == 2)
    assert 0.38 < share2 < 0.62, share2
    assert n_pos_seen > 0 and n_neg_seen > 0


def test_negatives_include_other_classes():
    """Negatives are drawn from everything that is not the target: other classes too."""
    lab = np.ones((6, 6, 6), dtype=np.uint8)
    lab[:3] = 2  # no background at all
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = sample_training_prompt(lab, [1, 2], rng, max_negative=4, p_no_click=0.0)
        neg = _at(lab, p.clicks)[p.click_labels == 0]
        assert np.all(neg == 3 - p.target_class)


def test_empty_patch_is_no_object():
    lab = np.zeros((10, 12, 8), dtype=np.int16)
    lab[0] = IGNORE
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(100):
        p = sample_training_prompt(lab, FG, rng, max_negative=3, ignore_label=IGNORE)
        assert not p.has_object and p.target_class in FG
        assert np.all(p.click_labels == 0)
        assert np.all(_at(lab, p.clicks) == 0)  # ignore voxels never clicked
        bt = binary_target(lab, p.target_class, IGNORE)
        assert not np.any(bt == 1) and np.all(bt[0] == IGNORE)
        seen.add(p.target_class)
    assert seen == set(FG)

    t = torch.zeros((3, 1, 8, 8, 8), dtype=torch.int16)
    clicks, labels, tc, bt = simulate_training_prompts(t, FG, 5, p_no_click=0.0)
    assert bt.sum() == 0 and bt.dtype == torch.int16 and bt.shape == t.shape
    assert not torch.any(labels == 1)
    assert all(int(c) in FG for c in tc)


def test_binary_target_batched_matches_numpy_and_keeps_ignore():
    lab = multi_label_patch()
    t = torch.from_numpy(np.stack([lab, lab[::-1].copy()]))[:, None]
    clicks, labels, tc, bt = simulate_training_prompts(t, FG, np.random.default_rng(2), ignore_label=IGNORE)
    for b in range(2):
        ref = binary_target(t[b, 0].numpy(), int(tc[b]), IGNORE)
        assert np.array_equal(bt[b, 0].numpy(), ref)
        assert int(tc[b]) in (1, 2)
    assert clicks.dtype == torch.float32 and labels.dtype == torch.int64 and tc.dtype == torch.int64


def test_unknown_label_value_is_an_error():
    lab = np.zeros((4, 4, 4), dtype=np.int16)
    lab[0, 0, 0] = 7
    with pytest.raises(ValueError, match="7"):
        sample_training_prompt(lab, FG, 0)


def test_determinism_and_seed_dependence():
    lab = multi_label_patch()
    t = torch.from_numpy(np.stack([lab] * 4))[:, None]

    def run(seed):
        return simulate_training_prompts(t, FG, seed, max_positive=6, max_negative=6, ignore_label=IGNORE)

    a, b, c = run(11), run(11), run(12)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not all(x.shape == z.shape and torch.equal(x, z) for x, z in zip(a, c))
    # an int seed means default_rng(seed); a passed Generator carries on between calls
    g = np.random.default_rng(11)
    first = simulate_training_prompts(t, FG, g, max_positive=6, max_negative=6, ignore_label=IGNORE)
    for x, y in zip(first, a):
        assert torch.equal(x, y)
    second = simulate_training_prompts(t, FG, g, max_positive=6, max_negative=6, ignore_label=IGNORE)
    assert not all(x.shape == z.shape and torch.equal(x, z) for x, z in zip(first, second))
    with pytest.raises(TypeError):
        as_rng(None)


def test_p_no_click_one_gives_no_clicks():
    lab = multi_label_patch()
    t = torch.from_numpy(np.stack([lab] * 3))[:, None]
    clicks, labels, tc, bt = simulate_training_prompts(t, FG, 0, p_no_click=1.0, ignore_label=IGNORE)
    assert clicks.shape == (3, 0, 3) and labels.shape == (3, 0)
    assert all(int(c) in (1, 2) for c in tc)
    assert bt.shape == t.shape and torch.any(bt == 1)


def test_padding_in_mixed_batches():
    lab = multi_label_patch()
    t = torch.from_numpy(np.stack([lab] * 6))[:, None]
    found_mixed = False
    for seed in range(20):
        clicks, labels, tc, _ = simulate_training_prompts(t, FG, seed, max_positive=4, max_negative=4,
                                                          p_no_click=0.3, ignore_label=IGNORE)
        counts = (labels >= 0).sum(dim=1)
        assert labels.shape[1] == int(counts.max())
        for b in range(6):
            n = int(counts[b])
            assert torch.all(labels[b, n:] == -1) and torch.all(labels[b, :n] >= 0)
            assert torch.all(clicks[b, n:] == 0)
            vals = _at(lab, clicks[b, :n].numpy().astype(np.float64))
            assert np.all((vals == int(tc[b])) == (labels[b, :n].numpy() == 1))
        if len(set(counts.tolist())) > 1 and 0 in counts.tolist():
            found_mixed = True
            break
    assert found_mixed


def test_sampling_is_fast_on_128_cubed():
    import time
    lab = np.zeros((128, 128, 128), dtype=np.int16)
    lab[10:90, 10:90, 10:90] = 1
    lab[100:104, 100:104, 100:104] = 2
    t = torch.from_numpy(lab)[None, None].repeat(2, 1, 1, 1, 1)
    simulate_training_prompts(t, [1, 2], 0)
    t0 = time.perf_counter()
    simulate_training_prompts(t, [1, 2], 1)
    assert time.perf_counter() - t0 < 2.0  # generous: the machine is shared; ~0.06 s when idle


# ---------------------------------------------------------------------------------- corrections

def _blob_volume():
    """Target with two FN blobs (5^3 and 3^3 cubes) missed by the prediction and one 4^3 FP blob."""
    tgt = np.zeros((30, 30, 30), dtype=bool)
    pred = np.zeros_like(tgt)
    tgt[2:7, 2:7, 2:7] = True           # FN, 125 voxels, centre (4, 4, 4)
    tgt[20:23, 2:5, 2:5] = True         # FN, 27 voxels
    pred[10:14, 20:24, 20:24] = True    # FP, 64 voxels
    tgt[15:25, 15:25, 5:8] = True       # correctly predicted object
    pred[15:25, 15:25, 5:8] = True
    return pred, tgt


def test_correction_click_false_negative_largest():
    pred, tgt = _blob_volume()
    c = correction_click(pred, tgt)
    assert c is not None and c.label == 1
    assert np.array_equal(c.point, [4, 4, 4])


def test_correction_click_false_positive_largest():
    pred, tgt = _blob_volume()
    pred[10:16, 20:26, 20:26] = True  # FP grows to 216 voxels
    c = correction_click(pred, tgt, spacing=(1.0, 1.0, 1.0))
    assert c is not None and c.label == 0
    z, y, x = c.point.astype(int)
    assert 10 <= z < 16 and 20 <= y < 26 and 20 <= x < 26
    assert pred[z, y, x] and not tgt[z, y, x]
    # centre: every coordinate is one of the two middle voxels of the 6-wide cube
    assert z in (12, 13) and y in (22, 23) and x in (22, 23)


def test_correction_click_components_not_merged_across_polarity():
    """An FN and an FP region that touch are separate regions: FN 20 + FP 30 voxels -> FP wins."""
    tgt = np.zeros((10, 10, 10), dtype=bool)
    pred = np.zeros_like(tgt)
    tgt[0:2, 0:2, 0:5] = True    # FN 20
    pred[2:4, 0:3, 0:5] = True   # FP 30, touching the FN block
    c = correction_click(pred, tgt)
    assert c.label == 0 and pred[tuple(c.point.astype(int))]


def test_correction_click_border_and_spacing():
    """Error slab at the array border: the click is not placed on the border; spacing is honoured."""
    tgt = np.zeros((20, 20, 20), dtype=bool)
    tgt[:, :, :4] = True
    c = correction_click(np.zeros_like(tgt), tgt)
    assert c.label == 1 and c.point[2] in (1, 2) and 5 <= c.point[0] <= 14 and 5 <= c.point[1] <= 14
    # in mm with a coarse first axis the slab is deepest in the middle of the box, still inside
    c2 = correction_click(np.zeros_like(tgt), tgt, spacing=(5.0, 1.0, 1.0))
    assert tgt[tuple(c2.point.astype(int))]


def test_correction_click_perfect_prediction_and_ignore():
    pred, tgt = _blob_volume()
    assert correction_click(tgt, tgt) is None
    ignore = pred ^ tgt
    assert correction_click(pred, tgt, ignore_mask=ignore) is None


def test_add_correction_clicks_batched():
    pred, tgt = _blob_volume()
    P = torch.from_numpy(np.stack([pred, tgt, pred]).astype(np.uint8))[:, None]
    T = torch.from_numpy(np.stack([tgt, tgt, tgt]).astype(np.int16))[:, None]
    T[2, 0][torch.from_numpy(pred ^ tgt)] = IGNORE  # all errors of sample 2 in ignore voxels
    clicks = torch.tensor([[[1.0, 2.0, 3.0]], [[4.0, 5.0, 6.0]], [[0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1], [0], [-1]])
    c2, l2 = add_correction_clicks(P, T, clicks, labels, ignore_label=IGNORE)
    assert c2.shape == (3, 2, 3) and l2.shape == (3, 2)
    assert torch.equal(c2[:, :1], clicks) and torch.equal(l2[:, :1], labels)
    assert l2[0, 1] == 1 and torch.equal(c2[0, 1], torch.tensor([4.0, 4.0, 4.0]))
    assert l2[1, 1] == -1 and l2[2, 1] == -1  # perfect / errors only where ignored


# ---------------------------------------------------------------------------------- protocol

def test_protocol_clicks_inside_unique_deterministic_nested():
    lab = multi_label_patch()
    s = case_class_seed("case_007", 2, 0)
    a = protocol_clicks(lab, 2, 10, s)
    assert a.shape == (10, 3) and a.dtype == np.float64
    assert np.all(_at(lab, a) == 2)
    assert len({tuple(r) for r in a}) == 10
    assert np.array_equal(a, protocol_clicks(lab, 2, 10, s))
    assert np.array_equal(a[:3], protocol_clicks(lab, 2, 3, s))  # nested: curves over K are consistent
    other = protocol_clicks(lab, 2, 10, case_class_seed("case_007", 2, 1))
    assert not np.array_equal(a, other)
    allc = protocol_clicks(lab, 2, 1000, s)  # more than the class has: every voxel once
    assert allc.shape == (27, 3) and len({tuple(r) for r in allc}) == 27
    assert protocol_clicks(lab, 3, 5, s).shape == (0, 3)  # absent class


def test_case_class_seed_stable_across_processes():
    a = case_class_seed("liver_12", 2, 7)
    assert a == case_class_seed("liver_12", 2, 7)
    key = "sam3d_nnunet-clicks\x00liver_12\x002\x007".encode()
    assert a == int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1
    assert 0 <= a < 2 ** 63
    assert len({a, case_class_seed("liver_12", 1, 7), case_class_seed("liver_13", 2, 7),
                case_class_seed("liver_12", 2, 8)}) == 4
    # a fresh interpreter with a different str-hash salt gives the same seed (hash() would not)
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('sim', {_sim_path()!r}); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(m.case_class_seed('liver_12', 2, 7))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == a


def _sim_path() -> str:
    import sam3d_nnunet.prompts.simulation as sim
    return sim.__file__
