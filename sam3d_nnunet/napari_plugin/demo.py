"""A DEMO DOUBLE for the plug-in: an intensity "oracle" with SAM3DNet's interface, NOT a trained model.

``IntensityOracleNet`` lets the widget, its tests and the screenshot script run the real session
(``InteractiveSession``: nnU-Net preprocessing, prompted windows, export to the raw geometry) without a trained
network. It "segments" by rules anyone can check:

* ``encode(window)``: the window, Gaussian-smoothed (``sigma`` voxels) -- the "features";
* ``decode(features, clicks, labels, class)``: the voxels inside the class's intensity band that are connected
  to a positive click and nearer to a positive than to any negative click (a negative click cuts away the part
  of the object closest to it). The band is ``bands[class]`` when given, else the smoothed intensity at the
  positive clicks +- ``tolerance``. An opening of ``opening_radius`` voxels before the connectivity test cuts
  thin bridges, holes are filled. Logit +10 inside, -10 outside, as [B, 2, *patch];
* boxes, lassos, scribbles and a previous mask (``point_types`` and ``dense_prompt``, as the session hands
  them to SAM3DNet): their sample points act as clicks of their polarity, except that for the band of a class
  without ``bands`` they count once, by their median intensity (most of a box's or lasso's points, and all of a
  scribble's, lie on the object: one outlier does not widen the band). A positive box or lasso keeps the result
  to the voxels of its slice(s) it covers plus everything off its slice(s); a negative one cuts what it covers.
  A previous mask (dense channel 0) is kept as it is: positive points inside it add nothing, positive points
  outside it add their connected band region (negative clicks only limit what they add; negative boxes and
  lassos cut the mask too);
* ``forward(image)`` (the automatic mode, no clicks): per class with a band, the largest connected band region,
  as nnU-Net-style margins [B, num_classes, *patch] with channel 0 = 0.

``make_demo_session`` wraps it in an ``InteractiveSession`` with minimal in-memory nnU-Net plans
(``NoNormalization``, so bands and tolerances are in the image's own units, e.g. HU). The widget shows the
session's description, which says DEMO DOUBLE, in its status line.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

DEMO_DESCRIPTION = "DEMO DOUBLE (intensity oracle, not a trained model)"


class IntensityOracleNet(torch.nn.Module):
    """DEMO / TEST DOUBLE with SAM3DNet's interface; see the module docstring."""

    def __init__(self, patch_size: Sequence[int] = (32, 32, 32), num_classes: int = 2,
                 bands: Optional[Dict[int, Tuple[float, float]]] = None, tolerance: float = 50.0,
                 sigma: float = 0.0, opening_radius: int = 0):
        super().__init__()
        self.patch_size = tuple(int(p) for p in patch_size)
        self.num_classes = int(num_classes)
        self.bands = {int(k): (float(v[0]), float(v[1])) for k, v in (bands or {}).items()}
        self.tolerance = float(tolerance)
        self.sigma = float(sigma)
        self.opening_radius = int(opening_radius)
        self.weight = torch.nn.Parameter(torch.zeros(1))  # state_dict / .to / .eval work as for a network
        self.encode_calls = 0
        self.decode_calls = 0

    # ------------------------------------------------------------------ SAM3DNet interface
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        x = image[:, :1].detach().float().cpu()
        if self.sigma > 0:
            x = torch.from_numpy(np.stack([ndimage.gaussian_filter(v[0].numpy(), self.sigma)
                                           for v in x])[:, None].astype(np.float32))
        return x

    def decode(self, features: torch.Tensor, clicks: Optional[torch.Tensor] = None,
               click_labels: Optional[torch.Tensor] = None, target_class=1, point_types: Optional[torch.Tensor] = None,
               dense_prompt: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.decode_calls += 1
        b = features.shape[0]
        target = torch.as_tensor(target_class).reshape(-1).expand(b)
        out = []
        for i in range(b):
            img = features[i, 0].numpy()
            pts = np.zeros((0, 3)) if clicks is None else clicks[i].detach().cpu().numpy().reshape(-1, 3)
            labs = np.zeros(0) if click_labels is None else click_labels[i].detach().cpu().numpy().reshape(-1)
            types = np.zeros(len(labs), int) if point_types is None else \
                point_types[i].detach().cpu().numpy().reshape(-1)
            dense = None if dense_prompt is None else dense_prompt[i].detach().float().cpu().numpy() > 0.5
            mask = self._segment(img, pts[labs == 1], pts[labs == 0], int(target[i]), types[labs == 1], dense)
            margin = torch.from_numpy(np.where(mask, 10.0, -10.0).astype(np.float32))
            out.append(torch.stack([-margin / 2, margin / 2]))
        return torch.stack(out)

    def forward(self, image: torch.Tensor, clicks=None, click_labels=None, target_class=None) -> torch.Tensor:
        features = self.encode(image)
        if target_class is not None:
            return self.decode(features, clicks, click_labels, target_class)
        out = torch.full((image.shape[0], self.num_classes, *image.shape[2:]), -10.0)
        out[:, 0] = 0
        for i in range(image.shape[0]):
            img = features[i, 0].numpy()
            for c in range(1, self.num_classes):
                if c not in self.bands:
                    continue
                region = self._band(img, *self.bands[c])
                components, n = ndimage.label(region)
                if n:
                    largest = 1 + int(np.argmax(ndimage.sum_labels(region, components, range(1, n + 1))))
                    out[i, c][torch.from_numpy(components == largest)] = 10.0
        return out

    # ------------------------------------------------------------------ the rules
    def _band(self, img: np.ndarray, lo: float, hi: float) -> np.ndarray:
        region = (img >= lo) & (img <= hi)
        if self.opening_radius > 0:
            region = ndimage.binary_opening(region, ndimage.generate_binary_structure(3, 1),
                                            iterations=self.opening_radius)
        return region

    def _segment(self, img: np.ndarray, positives: np.ndarray, negatives: np.ndarray, class_id: int,
                 positive_types: Optional[np.ndarray] = None, dense: Optional[np.ndarray] = None) -> np.ndarray:
        shape = np.array(img.shape)
        types = np.zeros(len(positives), int) if positive_types is None else np.asarray(positive_types)
        previous = dense[0] if dense is not None and dense[0].any() else None
        if previous is not None:  # the previous mask is kept; positive points inside it add nothing
            outside = np.array([not previous[tuple(np.clip(np.rint(p).astype(int), 0, shape - 1))]
                                for p in positives], dtype=bool)
            positives, types = positives[outside], types[outside]
        if len(positives) == 0:
            return np.zeros(img.shape, dtype=bool) if previous is None else self._cut(previous, dense)
        seeds = [tuple(np.clip(np.rint(p).astype(int), 0, shape - 1)) for p in positives]
        if class_id in self.bands:
            lo, hi = self.bands[class_id]
        else:
            def local(seed):
                return float(np.median(img[tuple(slice(max(0, s - 1), s + 2) for s in seed)]))
            values = [local(s) for s, t in zip(seeds, types) if t == 0]  # clicks: every value counts
            drawn = [local(s) for s, t in zip(seeds, types) if t != 0]  # boxes, scribbles, lassos: their median
            values += [float(np.median(drawn))] if drawn else []
            lo, hi = min(values) - self.tolerance, max(values) + self.tolerance
        region = self._band(img, lo, hi)
        if len(negatives):  # keep the voxels nearer to a positive than to any negative click
            grid = np.indices(img.shape, dtype=np.float32).reshape(3, -1).T

            def nearest(points):
                d = np.full(len(grid), np.inf, dtype=np.float32)
                for p in points:
                    d = np.minimum(d, ((grid - p.astype(np.float32)) ** 2).sum(1))
                return d.reshape(img.shape)

            region &= nearest(positives) <= nearest(negatives)
        components, _ = ndimage.label(region)
        keep = np.zeros(img.shape, dtype=bool)
        for seed in seeds:
            if components[seed] > 0:
                keep |= components == components[seed]
        keep = ndimage.binary_fill_holes(keep)
        return self._cut(keep if previous is None else keep | previous, dense)

    @staticmethod
    def _cut(mask: np.ndarray, dense: Optional[np.ndarray]) -> np.ndarray:
        """A positive box / lasso keeps, on the slices it lies on, only what it covers; a negative one cuts it."""
        if dense is None:
            return mask
        positive_region, negative_region = dense[1], dense[2]
        if positive_region.any():
            for axis in range(3):  # the slices (along z, else y, else x) a region lies on
                others = tuple(a for a in range(3) if a != axis)
                on = positive_region.any(axis=others)
                if on.sum() < mask.shape[axis]:
                    index = [slice(None)] * 3
                    index[axis] = on
                    mask = mask.copy()
                    mask[tuple(index)] &= positive_region[tuple(index)]
                    break
        return mask & ~negative_region


def demo_plans(patch_size: Sequence[int], spacing_zyx: Sequence[float], dataset_name: str = "Dataset000_Demo",
               normalization: str = "NoNormalization") -> dict:
    """Minimal nnU-Net plans (one ``3d_fullres`` configuration, SimpleITK reader, no transpose) for the demo
    session: images are resampled to ``spacing_zyx`` (array order) and normalised with ``normalization``."""
    patch = [int(p) for p in patch_size]
    spacing = [float(s) for s in spacing_zyx]
    resample = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset_name, "plans_name": "DemoPlans",
        "original_median_spacing_after_transp": spacing, "original_median_shape_after_transp": patch,
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "none (demo)", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"max": 1.0, "mean": 0.0, "median": 0.0, "min": 0.0,
                                                              "percentile_00_5": 0.0, "percentile_99_5": 1.0,
                                                              "std": 1.0}},
        "configurations": {"3d_fullres": {
            "data_identifier": "DemoPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 1, "patch_size": patch, "median_image_size_in_voxels": patch, "spacing": spacing,
            "normalization_schemes": [normalization], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resample,
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_seg_kwargs": {**resample, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {**resample, "order": 1},
            "architecture": {"network_class_name": "sam3d_nnunet.model.SAM3DNet", "arch_kwargs": {},
                             "_kw_requires_import": []},
            "batch_dice": False}},
    }


def make_demo_session(spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0), patch_size: Sequence[int] = (32, 32, 32),
                      labels: Optional[Dict[str, int]] = None, max_windows_per_class: int = 8, **oracle_kwargs):
    """``(InteractiveSession, IntensityOracleNet)``: the real session around the DEMO DOUBLE.

    ``labels``: dataset.json ``labels`` (default ``{"background": 0, "object": 1}``); ``oracle_kwargs`` go to
    ``IntensityOracleNet`` (``bands``, ``tolerance``, ``sigma``, ``opening_radius``)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sam3d_nnunet.inference import InteractiveSession

    labels = dict(labels or {"background": 0, "object": 1})
    dataset_json = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 0, "file_ending": ".nii.gz",
                    "name": "demo"}
    plans = PlansManager(demo_plans(patch_size, spacing_zyx))
    net = IntensityOracleNet(patch_size, num_classes=max(labels.values()) + 1, **oracle_kwargs)
    session = InteractiveSession(net, plans, plans.get_configuration("3d_fullres"), dataset_json, "cpu",
                                 max_windows_per_class=max_windows_per_class, trainer_name="IntensityOracle (demo)")
    return session, net


__all__ = ["DEMO_DESCRIPTION", "IntensityOracleNet", "demo_plans", "make_demo_session"]
