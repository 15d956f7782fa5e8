"""``SAM3DPlanner``: nnU-Net experiment planning for the SAM 3D adapter network.

What it keeps from nnU-Net (inherited, unchanged): the dataset fingerprint, the axis transpose, resampling
functions, and the intensity normalisation chosen from ``channel_names`` (``CT`` -> percentile clip + z-score
from the fingerprint, anything else -> per-image z-score). Preprocessing runs through nnU-Net's
``DefaultPreprocessor``.

Target spacing (``decide_target_spacing``; one line is printed and the decision is stored in
``plans['sam3d']['spacing']``). ``r`` = largest / smallest axis of the dataset's MEDIAN spacing:

* ``-overwrite_target_spacing`` given: that spacing (the user decides);
* ``r > anisotropy_threshold`` (nnU-Net's, 3): thick-slice data. nnU-Net's 3d_fullres target spacing is kept
  (the median, or nnU-Net's 10th percentile along the thick axis); resampling to isotropic voxels would
  interpolate about ``r - 1`` of every ``r`` slices and multiply the voxel count by ``r``. The token stride
  along the thick axis is lowered instead (``choose_token_stride``, e.g. ``[1, 4, 4]`` at 3.3 x 1 x 1 mm), so
  tokens stay about isotropic in mm;
* ``r <= 3``: isotropic resampling to the finest axis of the median spacing (the paper's choice of
  isotropic voxels; at most 3x the voxels of nnU-Net's median spacing), one token stride for every axis.
  Isotropic data (``r`` = 1) are unchanged by this rule.

Also recorded in ``plans['sam3d']``: ``input_channels`` (how the dataset's channels reach SAM's three RGB
inputs, ``sam3d_nnunet.model.channel_mixer``: 1 repeated, 2 -> (c0, c1, mean), 3 direct, more than 3 a
trainable 1x1x1 mixer initialised to the channel mean) and ``labels`` (foreground classes, ignore label). A
region-based dataset (``regions_class_order``, labels given as lists) is refused when the planner is created:
the SAM3D trainers prompt one integer class at a time.

What it chooses for the ViT (the ``3d_fullres`` configuration only; 2d and 3d_lowres are not planned, since a
windowed 3D ViT has no use for them and the cascade needs a U-Net):

* ``token_stride`` (voxels per token along each axis) and ``window_size`` (tokens per attention window) per
  SAM variant (``VARIANT_DEFAULTS``; vit_b is the paper's setting: stride 4, window 8, adapter width 384,
  patch 128^3). On thick-slice data the stride along the coarse axis is lowered (a power of two, e.g.
  ``[1, 4, 4]`` at 3.3 x 1 x 1 mm) so tokens stay about isotropic in mm (``choose_token_stride``); the plans
  then hold a list, otherwise one int;
* a patch whose token grid ``patch / token_stride`` is a multiple of ``window_size`` along every axis, i.e.
  axis i a multiple of ``unit_i = token_stride_i * window_size`` (axes may differ: not only cubes). It starts
  from the variant's reference number of tokens (vit_b: 32^3) on a token grid shaped so the patch is
  physically about cubic, rounded to the nearest unit, is clipped to the median image shape rounded UP to the
  unit (so small images such as the hippocampus, about 36x50x35, are covered whole: 48x64x48 for the tiny
  variant), then shrunk one unit at a time along the axis of largest physical extent until the training
  memory estimate fits the budget;
* the batch size: the most samples that fit the budget, capped (like nnU-Net) so one batch covers at most
  5% of the dataset's voxels, but at least ``min_batch_size`` (2, or 1 where 2 would not fit);
* ``gradient_checkpointing`` (recompute each transformer block in the backward pass): on where memory is
  short, i.e. where the reference patch with ``min_batch_size`` samples would not fit the budget without it
  (the paper setting, vit_b 128^3, at 12 GB). It saves about two thirds of the memory for about 35% more
  time per step, so it is used to reach the reference patch and the minimum batch, not to grow the batch:
  with it on, the batch stays at ``min_batch_size``.

Memory budget: ``gpu_memory_target_in_gb`` (nnU-Net's ``-gpu_memory_target``), default 12 GB of GPU memory
for training, the reference target. The estimate is ``sam3d_nnunet.model.estimate_training_memory_gb``, a
model fitted to training steps measured on a GPU (bf16 autocast; within 2% for vit_b and vit_l, see
BENCHMARKS.md): vit_b 128^3 batch 1 is 12.7 GB without checkpointing and 4.3 GB with it.

The plans file (identifier ``SAM3DPlans``) holds, besides nnU-Net's usual entries,
``configurations.3d_fullres.architecture = {"network_class_name": "sam3d_nnunet.model.SAM3DNet",
"arch_kwargs": {...}, "_kw_requires_import": []}`` and a top-level ``"sam3d"`` block with the SAM variant,
the SAM checkpoint path the user gave (absolute; ``null`` if none: training then starts from random
weights, with a loud warning) and the memory budget and estimate.
"""
from __future__ import annotations

import math
import os
import shutil
import warnings
from copy import deepcopy
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

from sam3d_nnunet.model import estimate_training_memory_gb

NETWORK_CLASS_NAME = "sam3d_nnunet.model.SAM3DNet"
DEFAULT_PLANS_NAME = "SAM3DPlans"
DEFAULT_GPU_MEMORY_TARGET_GB = 12.0

# Per-variant choices of the planner: token stride, attention window (in tokens) and the reference (largest)
# patch. Adapter and neck widths come from the model's variant table (vit_b: adapter 384, necks 256, the
# paper's setting). The tiny variant is not a published SAM: a small encoder of the same structure for tests
# and CPU demos, with windows of 4 tokens so that patches are multiples of 16 voxels.
VARIANT_DEFAULTS = {
    "tiny": {"token_stride": 4, "window_size": 4, "reference_patch": (64, 64, 64)},
    "vit_b": {"token_stride": 4, "window_size": 8, "reference_patch": (128, 128, 128)},
    "vit_l": {"token_stride": 4, "window_size": 8, "reference_patch": (128, 128, 128)},
    "vit_h": {"token_stride": 4, "window_size": 8, "reference_patch": (128, 128, 128)},
}


def _variant_dims(variant: str):
    """(adapter width, neck width) of a SAM variant."""
    from sam3d_nnunet.model import get_variant
    v = get_variant(variant)
    return v.default_adapter_dim, v.default_neck_dim


def loud_warning(message: str) -> None:
    """A warning that is hard to miss: a banner on stderr plus ``warnings.warn``."""
    import sys
    bar = "!" * 100
    print(f"\n{bar}\nWARNING: {message}\n{bar}\n", file=sys.stderr, flush=True)
    warnings.warn(message, stacklevel=3)


def round_nearest(x: float, unit: int) -> int:
    return int(max(unit, round(float(x) / unit) * unit))


def round_up(x: float, unit: int) -> int:
    return int(max(unit, math.ceil(float(x) / unit) * unit))


def region_based_refusal(dataset_json: dict, dataset_name: str) -> Optional[str]:
    """Why the SAM3D planner refuses a dataset whose ``dataset.json`` is region-based (nnU-Net's rule: a label
    given as a list of several values, or ``regions_class_order``), else None. ``sam3d-nnunet
    plan_and_preprocess`` asks before fingerprinting; the planner asks again when it is created."""
    labels = dataset_json.get('labels') or {}
    regions = [k for k, v in labels.items() if isinstance(v, (list, tuple)) and len(v) > 1]
    if not regions and dataset_json.get('regions_class_order') is None:
        return None
    return (f"dataset {dataset_name} is region-based (regions_class_order "
            f"{dataset_json.get('regions_class_order')}, labels given as lists of values: {regions}). The SAM3D "
            f"network is prompted for ONE integer class at a time and its trainers do not support nnU-Net's "
            f"region-based training; write the labels as plain integer classes (one label value per class) or "
            f"plan this dataset with nnU-Net's own planner.")


class SAM3DPlanner(ExperimentPlanner):
    """nnU-Net planner for ``sam3d_nnunet.model.SAM3DNet`` (see the module docstring)."""

    default_sam_variant = "vit_b"
    min_batch_size = 2

    def __init__(self, dataset_name_or_id: Union[str, int],
                 gpu_memory_target_in_gb: float = DEFAULT_GPU_MEMORY_TARGET_GB,
                 preprocessor_name: str = 'DefaultPreprocessor', plans_name: str = DEFAULT_PLANS_NAME,
                 overwrite_target_spacing: Union[List[float], Tuple[float, ...]] = None,
                 suppress_transpose: bool = False,
                 sam_variant: Optional[str] = None, sam_checkpoint: Optional[str] = None,
                 finetune: str = "adapter", decoder: str = "mla", click_maps: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self.sam_variant = sam_variant or self.default_sam_variant
        if self.sam_variant not in VARIANT_DEFAULTS:
            raise ValueError(f"unknown SAM variant {self.sam_variant!r}; choose one of {sorted(VARIANT_DEFAULTS)}")
        if sam_checkpoint is not None:
            sam_checkpoint = os.path.abspath(os.path.expanduser(str(sam_checkpoint)))
            if not os.path.isfile(sam_checkpoint):
                raise FileNotFoundError(f"SAM checkpoint {sam_checkpoint} does not exist")
        self.sam_checkpoint = sam_checkpoint
        self.finetune = finetune
        self.decoder = decoder  # "mla": the paper's decoder; "linear": the faster, non-paper one
        self.click_maps = bool(click_maps)  # clicks also as dense balls (SAM3DNet's click_maps; not the paper's)
        self.memory_target_gb = float(gpu_memory_target_in_gb)
        self.refuse_unsupported_labels()
        self.spacing_decision: Optional[dict] = None

    # ------------------------------------------------------------------ labels and channels
    def refuse_unsupported_labels(self) -> None:
        """Region-based datasets are refused (clear message); an ``ignore`` label is supported."""
        from nnunetv2.utilities.label_handling.label_handling import LabelManager
        reason = region_based_refusal(self.dataset_json, self.dataset_name)
        if reason is not None:
            raise ValueError(f"SAM3DPlanner: {reason}")
        LabelManager(self.dataset_json.get('labels', {}), None)  # nnU-Net's own checks (e.g. the ignore label must be the highest value)

    def label_record(self) -> dict:
        from nnunetv2.utilities.label_handling.label_handling import LabelManager
        lm = LabelManager(self.dataset_json['labels'], None)
        return {
            'foreground_labels': [int(i) for i in lm.foreground_labels],
            'num_classes_with_background': int(lm.num_segmentation_heads),
            'ignore_label': None if lm.ignore_label is None else int(lm.ignore_label),
            'prompting': 'one foreground class per prompt; training draws the target class uniformly over the '
                         'classes present in the patch (sam3d_nnunet.prompts.simulation.sample_training_prompt); '
                         'voxels of the ignore label are never clicked and are masked out of the loss and metrics',
        }

    def channel_record(self) -> dict:
        names = self.dataset_json.get('channel_names', self.dataset_json.get('modality', {}))
        n = len(names)
        if n == 1:
            mapping, text = 'repeat', 'the one channel is repeated into SAM\'s 3 RGB inputs (fixed)'
        elif n == 2:
            mapping, text = 'c0_c1_mean', 'SAM\'s 3 inputs are (channel 0, channel 1, mean of both) (fixed)'
        elif n == 3:
            mapping, text = 'direct', 'the 3 channels are SAM\'s 3 inputs, in order (fixed)'
        else:
            mapping, text = ('trainable_mixer', f'a trainable 1x1x1 mixing {n} -> 3 channels, initialised to the '
                                                f'mean of the {n} channels in each of SAM\'s 3 inputs')
        return {'count': n, 'names': {str(k): v for k, v in names.items()}, 'mapping': mapping, 'description': text,
                'module': 'sam3d_nnunet.model.channel_mixer.InputChannelMixer'}

    # ------------------------------------------------------------------ spacing
    def nnunet_target_spacing(self) -> np.ndarray:
        """nnU-Net's own 3d_fullres target spacing (median; 10th percentile along a thick axis), or the user's."""
        return np.asarray(super().determine_fullres_target_spacing(), dtype=float)

    def decide_target_spacing(self) -> dict:
        """The target spacing rule of the module docstring; spacings in the raw (untransposed) axis order."""
        median = np.median(np.vstack(self.dataset_fingerprint['spacings']), 0).astype(float)
        nnunet = self.nnunet_target_spacing()
        ratio = float(median.max() / median.min())
        threshold = float(self.anisotropy_threshold)
        if self.overwrite_target_spacing is not None:
            decision, target = 'user', nnunet
        elif ratio > threshold:
            decision, target = 'nnunet_anisotropic', nnunet
        else:
            decision, target = 'isotropic', np.full(3, float(median.min()))
        return {'decision': decision, 'median_spacing': median, 'nnunet_target_spacing': nnunet,
                'target_spacing': target, 'anisotropy_ratio': ratio, 'anisotropy_threshold': threshold}

    def determine_fullres_target_spacing(self) -> np.ndarray:
        return np.asarray(self.decide_target_spacing()['target_spacing'], dtype=float)

    def determine_transpose(self):
        """nnU-Net's rule (coarsest axis first), applied to nnU-Net's target spacing whatever spacing is chosen."""
        if self.suppress_transpose:
            return [0, 1, 2], [0, 1, 2]
        max_spacing_axis = int(np.argmax(self.nnunet_target_spacing()))
        transpose_forward = [max_spacing_axis] + [i for i in range(3) if i != max_spacing_axis]
        transpose_backward = [int(np.argwhere(np.array(transpose_forward) == i)[0][0]) for i in range(3)]
        return transpose_forward, transpose_backward

    def spacing_record(self, transpose_forward: Sequence[int]) -> dict:
        """The decision in the plans' (transposed) axis order, with the token stride and token size, and the
        one-line message the planner prints."""
        d = self.decide_target_spacing()
        tf = list(transpose_forward)
        med, nn_t, tgt = (np.asarray(d[k])[tf] for k in ('median_spacing', 'nnunet_target_spacing',
                                                           'target_spacing'))
        strides = self.choose_token_stride(tgt)
        token_mm = [float(s * t) for s, t in zip(strides, tgt)]

        def fmt(v):
            return '(' + ', '.join(f'{float(x):.3g}' for x in v) + ')'

        tokens = f"token stride {fmt(strides)} -> tokens of {' x '.join(f'{t:.2g}' for t in token_mm)} mm"
        r, thr = d['anisotropy_ratio'], d['anisotropy_threshold']
        if d['decision'] == 'user':
            msg = (f"SAM3DPlanner: target spacing {fmt(tgt)} mm set by -overwrite_target_spacing (median spacing "
                   f"{fmt(med)} mm, ratio {r:.2g}); {tokens}")
        elif d['decision'] == 'nnunet_anisotropic':
            msg = (f"SAM3DPlanner: median spacing {fmt(med)} mm is anisotropic (ratio {r:.2g} > {thr:g}): keeping "
                   f"nnU-Net's target spacing {fmt(nn_t)} and {tokens}")
        elif r > 1.0 + 1e-3:
            msg = (f"SAM3DPlanner: median spacing {fmt(med)} mm is not anisotropic (ratio {r:.2g} <= {thr:g}): "
                   f"resampling isotropically to {fmt(tgt)} mm (the paper's choice; nnU-Net's target spacing would "
                   f"be {fmt(nn_t)}), {tokens}")
        else:
            msg = f"SAM3DPlanner: median spacing {fmt(med)} mm is isotropic: target spacing {fmt(tgt)}, {tokens}"
        return {
            'decision': d['decision'],
            'rule': f"median spacing ratio (largest / smallest axis) > {thr:g} (nnU-Net's anisotropy threshold): "
                    f"nnU-Net's target spacing + per-axis token stride; otherwise isotropic resampling to the finest "
                    f"median axis; -overwrite_target_spacing wins",
            'axis_order': 'plans (transposed) axis order, like configurations.3d_fullres.spacing',
            'median_spacing': [float(x) for x in med],
            'anisotropy_ratio': round(float(r), 4),
            'anisotropy_threshold': float(thr),
            'nnunet_target_spacing': [float(x) for x in nn_t],
            'target_spacing': [float(x) for x in tgt],
            'token_stride': [int(x) for x in strides],
            'token_size_mm': [round(t, 4) for t in token_mm],
            'message': msg,
        }

    # ------------------------------------------------------------------ choices for the ViT
    def variant_arch_defaults(self) -> dict:
        d = deepcopy(VARIANT_DEFAULTS[self.sam_variant])
        d["adapter_dim"], d["neck_dim"] = _variant_dims(self.sam_variant)
        return d

    def choose_token_stride(self, spacing: Sequence[float]) -> List[int]:
        """Per-axis token stride: the variant's stride along the finest axes; along a coarser (thick-slice) axis
        the power of two (dividing SAM's 16-pixel patch, at most the variant's stride) that brings the token's
        physical size closest to the in-plane one, e.g. [1, 4, 4] for 3.3 x 1 x 1 mm. Isotropic data: the
        variant's stride everywhere."""
        base = int(VARIANT_DEFAULTS[self.sam_variant]["token_stride"])
        spacing = np.asarray(spacing, dtype=float)
        choices = [c for c in (1, 2, 4, 8, 16) if c <= base]
        strides = []
        for r in spacing / spacing.min():
            ideal = base / r
            strides.append(int(min(choices, key=lambda c: abs(math.log2(c) - math.log2(ideal)))))
        return strides

    def choose_patch_and_batch(self, spacing: Sequence[float], median_shape: Sequence[float],
                               approximate_n_voxels_dataset: float) -> Tuple[List[int], int, bool, float]:
        """(patch_size, batch_size, gradient_checkpointing, estimated GB) for the given (transposed) spacing and
        median shape; see the module docstring."""
        d = self.variant_arch_defaults()
        strides, window = self.choose_token_stride(spacing), d["window_size"]
        units = [st * window for st in strides]

        def estimate(p, bs, checkpointing):
            return estimate_training_memory_gb(self.sam_variant, p, strides, bs, d["adapter_dim"], d["neck_dim"],
                                               self.finetune, checkpointing, self.decoder)

        # start from the reference number of TOKENS, the token grid shaped so the patch is physically about
        # cubic (tokens along an axis proportional to 1 / (stride * spacing))
        ref_tokens = float(np.prod(d["reference_patch"], dtype=np.float64)) / d["token_stride"] ** 3
        aspect = 1.0 / (np.asarray(strides, dtype=float) * np.asarray(spacing, dtype=float))
        grid = aspect * (ref_tokens / np.prod(aspect)) ** (1.0 / 3)
        initial = grid * np.asarray(strides, dtype=float)
        cap = [round_up(m, u) for m, u in zip(median_shape, units)]
        patch = [min(round_nearest(i, u), c) for i, u, c in zip(initial, units, cap)]
        checkpointing = estimate(patch, self.min_batch_size, False) > self.memory_target_gb
        # shrink, one unit at a time, the axis with the largest physical extent (keeps the patch's physical
        # shape close to a cube); ties: the axis largest relative to the median shape
        while estimate(patch, 1, checkpointing) > self.memory_target_gb and any(p > u for p, u in zip(patch, units)):
            keys = [(p * s, p / max(m, 1.0)) if p > u else (-1.0, -1.0)
                    for p, u, s, m in zip(patch, units, spacing, median_shape)]
            axis = max(range(len(patch)), key=lambda i: keys[i])
            patch[axis] -= units[axis]
        est1 = estimate(patch, 1, checkpointing)
        if est1 > self.memory_target_gb:
            warnings.warn(f"SAM3DPlanner: even the smallest patch {patch} is estimated at {est1:.1f} GB, above the "
                          f"{self.memory_target_gb} GB target; choose a smaller SAM variant or raise "
                          f"-gpu_memory_target.")
        # batch size: as many as fit (with checkpointing: up to min_batch_size), capped at 5% of the dataset's
        # voxels, at least min_batch_size if it fits
        most = self.min_batch_size if checkpointing else 64
        bs_fit = 1
        while bs_fit < most and estimate(patch, bs_fit + 1, checkpointing) <= self.memory_target_gb:
            bs_fit += 1
        bs_5pct = int(round(approximate_n_voxels_dataset * self.max_dataset_covered
                            / float(np.prod(patch, dtype=np.float64))))
        batch_size = max(min(bs_fit, bs_5pct), min(self.min_batch_size, bs_fit))
        return ([int(p) for p in patch], int(batch_size), bool(checkpointing),
                float(estimate(patch, batch_size, checkpointing)))

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        if len(spacing) != 3:
            raise RuntimeError("SAM3DPlanner only plans 3D configurations")
        d = self.variant_arch_defaults()
        patch, batch_size, checkpointing, est = self.choose_patch_and_batch(spacing, median_shape,
                                                                            approximate_n_voxels_dataset)
        strides = self.choose_token_stride(spacing)
        arch_kwargs = {
            "variant": self.sam_variant,
            "patch_size": patch,
            "token_stride": strides[0] if len(set(strides)) == 1 else strides,
            "window_size": d["window_size"],
            "adapter_dim": d["adapter_dim"],
            "neck_dim": d["neck_dim"],
            "finetune": self.finetune,
            "decoder": self.decoder,
            "gradient_checkpointing": checkpointing,
        }
        if self.click_maps:
            arch_kwargs["click_maps"] = True
        resampling_data, resampling_data_kwargs, resampling_seg, resampling_seg_kwargs = self.determine_resampling()
        resampling_softmax, resampling_softmax_kwargs = self.determine_segmentation_softmax_export_fn()
        normalization_schemes, mask_is_used_for_norm = \
            self.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        self._last_memory_estimate_gb = est
        if checkpointing:
            print(f"SAM3DPlanner: activation checkpointing ON: patch {patch} with {self.min_batch_size} samples is "
                  f"estimated above the {self.memory_target_gb:g} GB target without it; with it, batch "
                  f"{batch_size} is estimated at {est:.1f} GB (about 35% more time per step)", flush=True)
        return {
            'data_identifier': data_identifier,
            'preprocessor_name': self.preprocessor_name,
            'batch_size': batch_size,
            'patch_size': patch,
            'median_image_size_in_voxels': [float(i) for i in median_shape],
            'spacing': [float(i) for i in spacing],
            'normalization_schemes': normalization_schemes,
            'use_mask_for_norm': mask_is_used_for_norm,
            'resampling_fn_data': resampling_data.__name__,
            'resampling_fn_seg': resampling_seg.__name__,
            'resampling_fn_data_kwargs': resampling_data_kwargs,
            'resampling_fn_seg_kwargs': resampling_seg_kwargs,
            'resampling_fn_probabilities': resampling_softmax.__name__,
            'resampling_fn_probabilities_kwargs': resampling_softmax_kwargs,
            'architecture': {
                'network_class_name': NETWORK_CLASS_NAME,
                'arch_kwargs': arch_kwargs,
                '_kw_requires_import': [],
            },
            'batch_dice': False,
        }

    def plan_experiment(self):
        """Plan ``3d_fullres`` only (nnU-Net's spacing, transpose and normalisation; the ViT's patch/batch)."""
        if self.sam_checkpoint is None:
            loud_warning("SAM3DPlanner: no SAM checkpoint given (--sam-checkpoint); the plans record null and "
                         "training will start the ViT from RANDOM weights (fine for tests, poor for real use).")
        transpose_forward, transpose_backward = self.determine_transpose()
        self.spacing_decision = self.spacing_record(transpose_forward)
        channels, labels = self.channel_record(), self.label_record()
        print(self.spacing_decision['message'], flush=True)
        print(f"SAM3DPlanner: {channels['count']} input channel(s) {list(channels['names'].values())}: "
              f"{channels['description']}", flush=True)
        fullres_spacing = self.determine_fullres_target_spacing()
        fullres_spacing_transposed = fullres_spacing[transpose_forward]
        new_shapes = [compute_new_shape(j, i, fullres_spacing) for i, j in
                      zip(self.dataset_fingerprint['spacings'], self.dataset_fingerprint['shapes_after_crop'])]
        new_median_shape = np.median(new_shapes, 0)
        new_median_shape_transposed = new_median_shape[transpose_forward]
        approximate_n_voxels_dataset = float(np.prod(new_median_shape_transposed, dtype=np.float64) *
                                             self.dataset_json['numTraining'])
        if new_median_shape_transposed[0] == 1:
            raise RuntimeError("SAM3DPlanner needs 3D images; this dataset is 2D")
        plan_3d_fullres = self.get_plans_for_configuration(fullres_spacing_transposed, new_median_shape_transposed,
                                                           self.generate_data_identifier('3d_fullres'),
                                                           approximate_n_voxels_dataset, {})
        median_spacing = np.median(self.dataset_fingerprint['spacings'], 0)[transpose_forward]
        median_shape = np.median(self.dataset_fingerprint['shapes_after_crop'], 0)[transpose_forward]
        shutil.copy(join(self.raw_dataset_folder, 'dataset.json'),
                    join(nnUNet_preprocessed, self.dataset_name, 'dataset.json'))
        plans = {
            'dataset_name': self.dataset_name,
            'plans_name': self.plans_identifier,
            'original_median_spacing_after_transp': [float(i) for i in median_spacing],
            'original_median_shape_after_transp': [int(round(i)) for i in median_shape],
            'image_reader_writer': self.determine_reader_writer().__name__,
            'transpose_forward': [int(i) for i in transpose_forward],
            'transpose_backward': [int(i) for i in transpose_backward],
            'configurations': {'3d_fullres': plan_3d_fullres},
            'experiment_planner_used': self.__class__.__name__,
            'label_manager': 'LabelManager',
            'foreground_intensity_properties_per_channel': self.dataset_fingerprint[
                'foreground_intensity_properties_per_channel'],
            'sam3d': {
                'sam_variant': self.sam_variant,
                'sam_checkpoint': self.sam_checkpoint,
                'gpu_memory_target_gb': self.memory_target_gb,
                'estimated_training_memory_gb': round(self._last_memory_estimate_gb, 2),
                'spacing': self.spacing_decision,
                'input_channels': channels,
                'labels': labels,
                'note': '2d and 3d_lowres are not planned for the SAM 3D adapter (3d_fullres only).',
            },
        }
        print('SAM3D 3d_fullres configuration:')
        print(plan_3d_fullres)
        self.plans = plans
        self.save_plans(plans)
        return plans
