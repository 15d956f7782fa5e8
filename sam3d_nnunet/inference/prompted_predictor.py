"""Whole-volume prediction with click prompts: the ONE prediction path of validation and of ``predict``.

``PromptedPredictor`` works on nnU-Net's preprocessed arrays (transposed, cropped, resampled, normalised) and
returns nnU-Net-style "logits" [num_classes, *shape] that nnU-Net's own export functions turn into a
native-geometry segmentation (``export_prediction_from_logits``), exactly as ``nnUNetPredictor`` output is.

Prompted prediction of one class from its clicks (array-order voxel coordinates of the preprocessed array,
label 1 positive / 0 negative):

1. the image is padded to at least the patch size like nnU-Net's sliding window does (``pad_nd_image``,
   constant 0, centred); clicks shift with the padding;
2. the first window is the patch-sized box centred on the mean of the positive clicks (without one: on the
   centroid of the dense prompt's previous mask and positive regions if there are any, else on the mean of all
   clicks), shifted inside the image; boxes, scribbles and lassos arrive as clicks with a prompt type (``types``)
   and the dense prompt (``dense``, cropped with each window), see ``ClassPrompt``;
3. the window is encoded (features are cached per window position, so classes prompted in the same window
   share one encoder pass) and decoded with the clicks that fall inside it (in window coordinates);
4. if the window's predicted mask touches one of its faces that is not the image border, a neighbour window
   shifted half a patch outward across that face is queued. The neighbour receives the original clicks inside
   it plus one propagated positive click: the predicted-mask voxel of the overlap (the half window next to the
   face) nearest to the mean of those voxels. Windows run breadth first until no mask touches an inner face or
   ``max_windows_per_class`` windows (default 8) have run;
5. window logits are blended with nnU-Net's Gaussian importance map (``use_gaussian=False``: plain average);
   the class probability is the softmax of the blended logits; voxels no window covered are background.

Merging classes: each voxel goes to the prompted class of highest probability if that probability exceeds 0.5,
else to background. The returned [num_classes, *shape] tensor holds, per voxel, ``1 - max_c p_c`` in channel 0
and ``p_c`` in channel c (0 for classes without prompts). Its argmax is the merged label map, and nnU-Net's
export (linear resampling of these channels to native geometry, then argmax) reproduces that rule in native
space. The values are probabilities, not calibrated logits: ``--save_probabilities`` style softmax exports of
them are monotone but not calibrated, and where two classes' probabilities differ by a float32 rounding step
that softmax can make them equal, so that export's segmentation keeps the lower label there (the plain export
keeps the higher one).

Automatic (prompt-free) models (``nnUNetTrainerSAM3D_auto``) are predicted with nnU-Net's own sliding window
(``nnUNetPredictor.predict_sliding_window_return_logits``, Gaussian blending, step 0.5, mirroring off by
default), the network's ``forward(image)`` giving multi-class logits. ``PromptedPredictor.sliding_window_logits``
is the one implementation of that step (also the automatic mode of a prompted model in ``InteractiveSession``
and ``predict``), with the same precision policy as the prompted path.

Clicks given in raw-image voxel indices (the array order of the image reader, e.g. SimpleITK's (z, y, x)) map
into the preprocessed array by ``raw_to_preprocessed_coords``: transpose (``plans.transpose_forward``), subtract
the crop box's lower corner (``properties['bbox_used_for_cropping']``), scale voxel centres by
preprocessed shape / shape after cropping (``(i + 0.5) * s - 0.5``, the centre-aligned convention of nnU-Net's
resampling), clip into the array.

Validation protocol (``protocol_prompts_from_label``): for every foreground class present in the case's
native ground truth, ``n_clicks`` (default 1) uniformly random voxels of that class, seeded by
``case_class_seed(case_id, class_id, seed)``; absent classes get no prompt and are predicted empty.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from sam3d_nnunet.model.precision import autocast as precision_autocast
from sam3d_nnunet.prompts.simulation import case_class_seed, protocol_clicks


@dataclass
class ClassPrompt:
    """The prompts of one class as the network reads them (``sam3d_nnunet.prompts.shapes.encode_prompts``):
    ``clicks`` (n, 3) float array-order voxel coordinates (clicks and the points sampled from boxes, scribbles,
    lassos), ``labels`` (n,) 1/0, ``types`` (n,) prompt-type ids (None: all clicks) and ``dense`` the dense
    prompt [3, *shape] of the same array (None: no box, lasso or mask); ``dense_box`` optionally, per dense
    channel, a box ``(lo, hi)`` (inclusive) holding its non-zero voxels or None for an empty channel (what
    ``encode_prompts`` knows; mapping the dense prompt then reads only those boxes)."""

    clicks: np.ndarray
    labels: np.ndarray
    types: Optional[np.ndarray] = None
    dense: Optional[Union[np.ndarray, torch.Tensor]] = None
    dense_box: Optional[tuple] = None

    def __post_init__(self):
        self.clicks = np.asarray(self.clicks, dtype=np.float64).reshape(-1, 3)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.clicks) != len(self.labels):
            raise ValueError(f"{len(self.clicks)} clicks but {len(self.labels)} labels")
        if np.any((self.labels != 0) & (self.labels != 1)):
            raise ValueError("click labels must be 1 (positive) or 0 (negative)")
        self.types = (np.zeros(len(self.labels), np.int64) if self.types is None
                      else np.asarray(self.types, dtype=np.int64).reshape(-1))
        if len(self.types) != len(self.labels):
            raise ValueError(f"{len(self.types)} prompt types for {len(self.labels)} points")
        if self.dense is not None:
            self.dense = torch.as_tensor(self.dense, dtype=torch.float32)

    @classmethod
    def from_prompts(cls, prompts: Sequence, shape: Sequence[int], validate: bool = True) -> "ClassPrompt":
        """The ``ClassPrompt`` of prompts of ``sam3d_nnunet.prompts.shapes`` (clicks, boxes, scribbles, lassos, a
        mask) on an array of shape ``shape``, in that array's coordinates (``encode_prompts``)."""
        from sam3d_nnunet.prompts.shapes import encode_prompts
        enc = encode_prompts(prompts, shape, validate=validate)
        return cls(enc.points, enc.labels, enc.types, enc.dense, enc.dense_box)

    @property
    def empty(self) -> bool:
        """No point and no dense prompt: the automatic mode of the class."""
        return len(self.clicks) == 0 and self.dense is None


@dataclass
class PredictionReport:
    """What the predictor did for one case: windows per class (start corners in the padded array)."""

    windows: Dict[int, List[Tuple[int, ...]]] = field(default_factory=dict)
    hit_window_limit: Dict[int, bool] = field(default_factory=dict)


def raw_to_preprocessed_coords(points: np.ndarray, properties: dict, transpose_forward: Sequence[int],
                               preprocessed_shape: Sequence[int]) -> np.ndarray:
    """Map (n, 3) raw-image voxel indices (reader array order) into preprocessed array coordinates."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    p = points[:, list(transpose_forward)]
    bbox = np.asarray(properties['bbox_used_for_cropping'], dtype=np.float64)
    p = p - bbox[:, 0][None]
    after_crop = np.asarray(properties['shape_after_cropping_and_before_resampling'], dtype=np.float64)
    scale = np.asarray(preprocessed_shape, dtype=np.float64) / after_crop
    p = (p + 0.5) * scale[None] - 0.5
    return np.clip(p, 0, np.asarray(preprocessed_shape, dtype=np.float64)[None] - 1)


def raw_dense_to_preprocessed(dense: Union[np.ndarray, torch.Tensor], properties: dict,
                              transpose_forward: Sequence[int], preprocessed_shape: Sequence[int],
                              dense_box: Optional[tuple] = None) -> torch.Tensor:
    """A dense prompt [C, *raw shape] (reader array order) through the image's preprocessing: transpose, crop to
    the non-zero box (``bbox_used_for_cropping``), trilinear resampling to the preprocessed shape (voxel centres
    aligned, ``align_corners=False``, the convention of ``raw_to_preprocessed_coords``). ``dense_box`` (see
    ``ClassPrompt``): read only those boxes of the raw dense prompt."""
    dense = torch.as_tensor(dense, dtype=torch.float32)
    dense = dense.permute(0, *[1 + a for a in transpose_forward])
    bbox = [(int(a), int(b)) for a, b in properties['bbox_used_for_cropping']]
    dense = dense[(slice(None),) + tuple(slice(a, b) for a, b in bbox)]
    bounds = None
    if dense_box is not None:
        bounds = []
        for box in dense_box:
            if box is None:
                bounds.append(None)
                continue
            lo = [int(box[0][a]) - bbox[i][0] for i, a in enumerate(transpose_forward)]
            hi = [int(box[1][a]) - bbox[i][0] for i, a in enumerate(transpose_forward)]
            lo = [max(v, 0) for v in lo]
            hi = [min(v, n - 1) for v, n in zip(hi, dense.shape[1:])]
            bounds.append(None if any(a > b for a, b in zip(lo, hi)) else list(zip(lo, hi)))
    return resample_nonzero_box(dense, tuple(int(s) for s in preprocessed_shape), bounds)


def _nonzero_bounds(x: torch.Tensor) -> Optional[List[Tuple[int, int]]]:
    """Inclusive (first, last) index per axis of the non-zero voxels of a 3D CPU tensor; None if it is all zero."""
    from sam3d_nnunet.prompts.shapes import nonzero_box
    box = nonzero_box(x.numpy())
    return None if box is None else list(zip(*box))


def resample_nonzero_box(x: torch.Tensor, shape: Sequence[int],
                         bounds: Optional[Sequence[Optional[Sequence[Tuple[int, int]]]]] = None) -> torch.Tensor:
    """``F.interpolate(x[None], size=shape, mode="trilinear", align_corners=False)[0]`` for x [C, D, H, W],
    computed only over the output voxels that each channel's non-zero box reaches (elsewhere it is 0), channel by
    channel (an all-zero channel costs one comparison), and without interpolating along an axis whose size does
    not change (there trilinear resampling is the identity): a box or a mask on a large image costs its own
    size, not the image's. ``bounds``: per channel, (first, last) per axis of a box known to hold all its non-zero
    voxels, or None for a channel known to be zero (not looked at: given by whoever wrote the prompt)."""
    out = x.new_zeros((x.shape[0], *shape))
    for channel in range(x.shape[0]):
        xc = x[channel]
        box = _nonzero_bounds(xc) if bounds is None else bounds[channel]
        if box is None:
            continue
        crop, target, interpolate = [], [], []
        for axis, (n, m, (a, b)) in enumerate(zip(xc.shape, shape, box)):
            if n == m:  # identity along this axis
                crop.append(slice(a, b + 1))
                target.append(slice(a, b + 1))
                continue
            src = ((torch.arange(m, dtype=torch.float64) + 0.5) * (n / m) - 0.5).clamp(min=0)
            i0 = src.floor().long().clamp(max=n - 1)
            i1 = (i0 + 1).clamp(max=n - 1)
            reached = torch.nonzero((i0 <= b) & (i1 >= a))[:, 0]
            j = slice(int(reached[0]), int(reached[-1]) + 1)
            first = int(i0[j].min())
            crop.append(slice(first, int(i1[j].max()) + 1))
            target.append(j)
            interpolate.append((axis, i0[j] - first, i1[j] - first, (src[j] - i0[j]).float()))
        sub = xc[tuple(crop)]
        for axis, i0, i1, w in interpolate:
            view = [1] * 3
            view[axis] = -1
            sub = sub.index_select(axis, i0) * (1 - w).view(view) + sub.index_select(axis, i1) * w.view(view)
        out[(channel,) + tuple(target)] = sub
    return out


def class_prompt_to_preprocessed(prompt: ClassPrompt, properties: dict, transpose_forward: Sequence[int],
                                 preprocessed_shape: Sequence[int]) -> ClassPrompt:
    """A ``ClassPrompt`` in raw voxel indices (reader array order) mapped into the preprocessed array."""
    dense = None if prompt.dense is None else raw_dense_to_preprocessed(prompt.dense, properties, transpose_forward,
                                                                        preprocessed_shape, prompt.dense_box)
    return ClassPrompt(raw_to_preprocessed_coords(prompt.clicks, properties, transpose_forward, preprocessed_shape),
                       prompt.labels, prompt.types, dense)


def protocol_prompts_from_label(label: np.ndarray, case_id: str, foreground_labels: Iterable[int],
                                n_clicks: int = 1, seed: int = 0) -> Dict[int, ClassPrompt]:
    """Seeded validation clicks from a label array: ``n_clicks`` uniformly random voxels per present class."""
    prompts = {}
    for c in foreground_labels:
        pts = protocol_clicks(label, int(c), n_clicks, case_class_seed(case_id, int(c), seed))
        if len(pts):
            prompts[int(c)] = ClassPrompt(pts, np.ones(len(pts), dtype=np.int64))
    return prompts


def merge_class_probabilities(probabilities: Dict[int, torch.Tensor], num_classes: int,
                              shape: Sequence[int]) -> torch.Tensor:
    """[num_classes, *shape]: channel 0 = 1 - max_c p_c, channel c = p_c (see the module docstring)."""
    out = torch.zeros((num_classes, *shape), dtype=torch.float32)
    for c, p in probabilities.items():
        out[c] = p.float().cpu()
    if num_classes > 1:
        out[0] = 1.0 - out[1:].max(0).values
    else:
        out[0] = 1.0
    return out


class PromptedPredictor:
    """Prompted (or automatic) whole-volume prediction for a SAM3DNet; see the module docstring."""

    def __init__(self, network: nn.Module, plans_manager, configuration_manager, dataset_json: dict,
                 device: Union[str, torch.device] = "cpu", *, prompted: bool = True, max_windows_per_class: int = 8,
                 use_gaussian: bool = True, tile_step_size: float = 0.5, use_mirroring: bool = False,
                 allowed_mirroring_axes: Optional[Tuple[int, ...]] = None, trainer_name: str = "nnUNetTrainerSAM3D",
                 feature_cache_size: int = 8, list_of_parameters: Optional[List[dict]] = None,
                 verbose: bool = False, precision: str = "auto"):
        self.network = network
        self.plans_manager = plans_manager
        self.configuration_manager = configuration_manager
        self.dataset_json = dataset_json
        self.label_manager = plans_manager.get_label_manager(dataset_json)
        self.device = torch.device(device)
        self.prompted = prompted
        self.max_windows_per_class = int(max_windows_per_class)
        self.use_gaussian = use_gaussian
        self.tile_step_size = tile_step_size
        self.use_mirroring = use_mirroring
        self.allowed_mirroring_axes = allowed_mirroring_axes
        self.trainer_name = trainer_name
        self.feature_cache_size = feature_cache_size
        self.list_of_parameters = list_of_parameters
        self.verbose = verbose
        self.precision = precision  # 'auto': bf16 autocast where bf16 is fast (sam3d_nnunet.model.precision)
        self.patch_size = tuple(int(p) for p in configuration_manager.patch_size)
        self.last_report: Optional[PredictionReport] = None

    # ------------------------------------------------------------------ construction from a results folder
    @classmethod
    def from_trained_model_folder(cls, model_folder: str, folds: Union[Sequence[Union[int, str]], None] = (0,),
                                  checkpoint_name: str = "checkpoint_final.pth",
                                  device: Union[str, torch.device] = "cpu", **kwargs) -> "PromptedPredictor":
        """Load a trained model (``nnUNet_results/<dataset>/<trainer>__<plans>__<config>``) as nnU-Net does.

        The trainer class named in the checkpoint builds the network (so a variant's checkpoint is rebuilt by
        the same variant: fine-tuning policy, LoRA tensors). Several folds: their probabilities are averaged.
        Trainers are found through ``nnUNet_extTrainer`` like nnU-Net's predictor; when it is unset, the SAM3D
        trainers of this package are still found.
        """
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        base = nnUNetPredictor(device=torch.device(device), verbose=False, allow_tqdm=False,
                               use_mirroring=kwargs.get("use_mirroring", False))
        from sam3d_nnunet.model.slim_checkpoint import SLIM_KEY
        from sam3d_nnunet.validation import check_model_checkpoints
        checkpoints = check_model_checkpoints(model_folder, folds, checkpoint_name)  # weights_only: no pickled code
        with sam3d_trainers_visible():
            if any(SLIM_KEY in c for c in checkpoints.values()):
                _initialize_from_slim_checkpoints(base, model_folder, checkpoints, checkpoint_name)
            else:
                base.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name)
            trainer_class = recursive_find_trainer_class_by_name(base.trainer_name)
        prompted = bool(getattr(trainer_class, "use_prompts", True))
        kwargs.setdefault("max_windows_per_class", getattr(trainer_class, "max_windows_per_class", 8))
        return cls(base.network.to(device), base.plans_manager, base.configuration_manager, base.dataset_json,
                   device, prompted=prompted, allowed_mirroring_axes=base.allowed_mirroring_axes,
                   trainer_name=base.trainer_name, list_of_parameters=base.list_of_parameters, **kwargs)

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def predict_preprocessed(self, data: Union[np.ndarray, torch.Tensor],
                             prompts: Optional[Dict[int, ClassPrompt]] = None) -> torch.Tensor:
        """[C, *shape] preprocessed image (+ prompts in preprocessed coordinates) -> [num_classes, *shape]
        tensor (CPU, float32) for ``export_prediction_from_logits``. ``prompts`` None with a prompted model:
        every class empty. Several parameter sets (folds): averaged; for a prompted model the class probabilities
        are averaged and then merged (background = 1 - the highest mean class probability), as ``predict`` merges
        them, not the folds' merged maps."""
        if isinstance(data, np.ndarray):
            data = torch.from_numpy(np.ascontiguousarray(data))
        data = data.float()
        acc, n = None, 0
        with precision_autocast(self.device, self.precision):
            for _ in self.parameter_sets():
                out = self._predict_one(data, prompts)
                acc, n = (out if acc is None else acc + out), n + 1
        if n == 1:
            return acc
        acc = acc / n
        if self.prompted:
            acc = merge_class_probabilities({c: acc[c] for c in range(1, acc.shape[0])}, acc.shape[0],
                                            tuple(acc.shape[1:]))
        return acc

    def parameter_sets(self) -> Iterator[None]:
        """Load each parameter set (fold of an ensemble) into the network in turn, yielding after each; a single
        set: yields once with the network as it is.

        Autocast caches the low-precision copy of every trainable (``requires_grad``) weight for as long as the
        outermost autocast region lasts, keyed by the tensor; ``load_state_dict`` copies a fold's weights into
        those same tensors, so without clearing that cache every fold after the first would compute with the
        first fold's bf16 weights."""
        if self.list_of_parameters is None or len(self.list_of_parameters) <= 1:
            yield
            return
        for params in self.list_of_parameters:
            self.network.load_state_dict(params)
            torch.clear_autocast_cache()
            yield

    def _predict_one(self, data: torch.Tensor, prompts: Optional[Dict[int, ClassPrompt]]) -> torch.Tensor:
        self.network.eval()
        if not self.prompted:
            return self.sliding_window_logits(data)
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        padded, slicer = pad_nd_image(data, self.patch_size, 'constant', {'value': 0}, True, None)
        offset = np.array([s.start or 0 for s in slicer[1:]], dtype=np.float64)
        shape = tuple(data.shape[1:])
        report = PredictionReport()
        cache: "OrderedDict[tuple, object]" = OrderedDict()
        probs = {}
        for c, prompt in sorted((prompts or {}).items()):
            if c not in self.label_manager.foreground_labels:
                raise ValueError(f"prompt for class {c}, which is not a foreground label of this dataset "
                                 f"{self.label_manager.foreground_labels}")
            if prompt.empty:
                continue
            dense = None
            if prompt.dense is not None:
                if tuple(prompt.dense.shape[1:]) != shape:
                    raise ValueError(f"class {c}: dense prompt of shape {tuple(prompt.dense.shape)} for an image of "
                                     f"shape {shape}")
                dense = pad_nd_image(prompt.dense, self.patch_size, 'constant', {'value': 0}, False, None)
            p, windows, hit = self._predict_class(padded, prompt.clicks + offset[None], prompt.labels, c, cache,
                                                  prompt.types, dense)
            probs[c] = p[tuple(slicer[1:])]
            report.windows[c] = windows
            report.hit_window_limit[c] = hit
        self.last_report = report
        return merge_class_probabilities(probs, self.label_manager.num_segmentation_heads, shape)

    def predict_raw_case(self, image_files: List[str], prompts_raw: Optional[Dict[int, ClassPrompt]],
                         output_file_truncated: Optional[str] = None, save_probabilities: bool = False):
        """Preprocess raw image files with nnU-Net's preprocessor, predict with clicks given in RAW voxel
        indices, and export (if ``output_file_truncated``) through nnU-Net's export function. Returns
        (logits-like tensor, properties)."""
        from nnunetv2.inference.export_prediction import export_prediction_from_logits
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        data, _, properties = preprocessor.run_case(image_files, None, self.plans_manager,
                                                    self.configuration_manager, self.dataset_json)
        prompts = None
        if prompts_raw is not None:
            prompts = {c: class_prompt_to_preprocessed(p, properties, self.plans_manager.transpose_forward,
                                                       data.shape[1:])
                       for c, p in prompts_raw.items()}
        out = self.predict_preprocessed(data, prompts)
        if output_file_truncated is not None:
            export_prediction_from_logits(out, properties, self.configuration_manager, self.plans_manager,
                                          self.dataset_json, output_file_truncated, save_probabilities)
        return out, properties

    # ------------------------------------------------------------------ automatic mode
    @torch.no_grad()
    def sliding_window_logits(self, data: torch.Tensor) -> torch.Tensor:
        """THE automatic-mode prediction: the network's ``forward(image)`` over the whole preprocessed volume
        [C, *shape] with nnU-Net's sliding window (``predict_sliding_window_return_logits``: Gaussian blending,
        this predictor's step size and mirroring, results on the device on CUDA), under this predictor's
        precision policy (``sam3d_nnunet.model.precision``), with the parameter set currently loaded. Returns
        [num_outputs, *shape] on the CPU, float32: a prompt-free model's class logits, a prompted model's
        per-class logit margins over background (``InteractiveSession.auto``, ``predict --auto``)."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        from sam3d_nnunet.inference.io import _quiet
        with _quiet():  # nnU-Net prints notes about its settings
            sliding = nnUNetPredictor(tile_step_size=self.tile_step_size, use_gaussian=self.use_gaussian,
                                      use_mirroring=self.use_mirroring,
                                      perform_everything_on_device=self.device.type == "cuda", device=self.device,
                                      verbose=False, verbose_preprocessing=False, allow_tqdm=False)
            sliding.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                          self.dataset_json, self.trainer_name, self.allowed_mirroring_axes)
        self.network.eval()
        with precision_autocast(self.device, self.precision):
            return sliding.predict_sliding_window_return_logits(data.float()).float().cpu()

    # ------------------------------------------------------------------ prompted mode
    def _encode(self, window: torch.Tensor, key: tuple, cache: "OrderedDict[tuple, object]"):
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        feats = self.network.encode(window[None].to(self.device))
        cache[key] = feats
        while len(cache) > self.feature_cache_size:
            cache.popitem(last=False)
        return feats

    def _predict_class(self, image: torch.Tensor, clicks: np.ndarray, labels: np.ndarray, class_id: int,
                       cache, types: Optional[np.ndarray] = None, dense: Optional[torch.Tensor] = None
                       ) -> Tuple[torch.Tensor, List[Tuple[int, ...]], bool]:
        """Probability map [*padded shape] of ``class_id`` (CPU float32), windows used, limit hit. ``types``:
        prompt type per point; ``dense``: the padded dense prompt [3, *padded shape]."""
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        P = np.array(self.patch_size)
        S = np.array(image.shape[1:])
        logit_sum = torch.zeros((2, *S), dtype=torch.float32)
        weight_sum = torch.zeros(tuple(S), dtype=torch.float32)
        if self.use_gaussian:
            weight = compute_gaussian(tuple(P), sigma_scale=1. / 8, value_scaling_factor=10,
                                      dtype=torch.float32, device=torch.device('cpu'))
        else:
            weight = torch.ones(tuple(P), dtype=torch.float32)

        def clamp_start(start):
            return tuple(int(v) for v in np.clip(np.round(start), 0, S - P))

        types = np.zeros(len(labels), np.int64) if types is None else types
        positives = clicks[labels == 1]
        if len(positives):
            anchor = positives.mean(0)
        elif dense is not None and bool((dense[:2] > 0.5).any()) or not len(clicks):  # a mask, a box or a lasso
            anchor = _dense_anchor(dense)
        else:
            anchor = clicks.mean(0)
        queue: List[tuple] = [clamp_start(anchor - P / 2)]
        propagated: List[np.ndarray] = []
        done: List[tuple] = []
        hit_limit = False
        while queue:
            start = queue.pop(0)
            if start in done:
                continue
            if len(done) >= self.max_windows_per_class:
                hit_limit = True
                break
            done.append(start)
            st = np.array(start)
            sl = tuple(slice(a, a + p) for a, p in zip(start, P))
            all_clicks = np.concatenate([clicks, np.array(propagated).reshape(-1, 3)]) if propagated else clicks
            all_labels = np.concatenate([labels, np.ones(len(propagated), np.int64)]) if propagated else labels
            all_types = np.concatenate([types, np.zeros(len(propagated), np.int64)]) if propagated else types
            local = all_clicks - st[None]
            inside = np.all((local >= 0) & (local <= P[None] - 1), axis=1)
            feats = self._encode(image[(slice(None),) + sl], start, cache)
            c_t = torch.from_numpy(local[inside].astype(np.float32))[None].to(self.device)
            l_t = torch.from_numpy(all_labels[inside].astype(np.int64))[None].to(self.device)
            extra = {}  # only what is there: a clicks-only prompt calls decode exactly as before
            if all_types[inside].any():
                extra["point_types"] = torch.from_numpy(all_types[inside].astype(np.int64))[None].to(self.device)
            if dense is not None:
                extra["dense_prompt"] = dense[(slice(None),) + sl][None].to(self.device)
            logits = self.network.decode(feats, c_t, l_t, torch.tensor([class_id], device=self.device), **extra)[0]
            logits = logits.float().cpu()
            logit_sum[(slice(None),) + sl] += logits * weight[None]
            weight_sum[sl] += weight
            mask = logits.argmax(0).numpy().astype(bool)
            if not mask.any():
                continue
            for axis in range(3):
                for side in (0, 1):
                    idx = 0 if side == 0 else P[axis] - 1
                    face = np.take(mask, idx, axis=axis)
                    at_border = (st[axis] == 0) if side == 0 else (st[axis] + P[axis] == S[axis])
                    if at_border or not face.any():
                        continue
                    new = st.copy()
                    new[axis] += (-1 if side == 0 else 1) * (P[axis] // 2)
                    new_start = clamp_start(new)
                    if new_start in done or new_start in queue:
                        continue
                    # propagated positive click: mask voxel of the overlap nearest the overlap mask's mean
                    half = [slice(None)] * 3
                    half[axis] = slice(0, P[axis] // 2) if side == 0 else slice(P[axis] - P[axis] // 2, P[axis])
                    sub = np.argwhere(mask[tuple(half)]).astype(np.float64)
                    if side == 1:
                        sub[:, axis] += P[axis] - P[axis] // 2
                    pick = sub[np.argmin(((sub - sub.mean(0)) ** 2).sum(1))]
                    propagated.append(pick + st)
                    queue.append(new_start)
        covered = weight_sum > 0
        prob = torch.zeros(tuple(S), dtype=torch.float32)
        if covered.any():
            blended = logit_sum[:, covered] / weight_sum[covered][None]
            prob[covered] = torch.softmax(blended, 0)[1]
        if hit_limit and self.verbose:
            warnings.warn(f"class {class_id}: stopped at {self.max_windows_per_class} windows")
        return prob, done, hit_limit


def _dense_anchor(dense: torch.Tensor) -> np.ndarray:
    """Where a prompt without points (a mask) centres its first window: the centroid of its previous mask and
    positive regions (of any non-zero value if those are empty)."""
    positive = dense[:2].amax(0) > 0.5
    if not positive.any():
        positive = dense.abs().amax(0) > 0
    if not positive.any():
        return (np.array(dense.shape[1:], dtype=np.float64) - 1) / 2
    return torch.nonzero(positive).double().mean(0).numpy()


def _initialize_from_slim_checkpoints(base, model_folder: str, checkpoints: dict, checkpoint_name: str) -> None:
    """``nnUNetPredictor.initialize_from_trained_model_folder`` for checkpoints without the frozen SAM tensors
    (``sam3d_nnunet.model.slim_checkpoint``): the same steps, the omitted tensors converted again from the
    SAM checkpoint each one names."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sam3d_nnunet.model.slim_checkpoint import SLIM_KEY, complete_slim_weights

    dataset_json = load_json(os.path.join(model_folder, "dataset.json"))
    plans_manager = PlansManager(load_json(os.path.join(model_folder, "plans.json")))
    first = next(iter(checkpoints.values()))
    trainer_name = first["trainer_name"]
    configuration_manager = plans_manager.get_configuration(first["init_args"]["configuration"])
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    num_input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads

    def build():
        return trainer_class.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_outputs, enable_deep_supervision=False)

    parameters = []
    for fold, checkpoint in checkpoints.items():
        weights = checkpoint["network_weights"]
        if SLIM_KEY in checkpoint:
            weights = complete_slim_weights(weights, checkpoint[SLIM_KEY], build(),
                                            os.path.join(model_folder, f"fold_{fold}", checkpoint_name))
        parameters.append(weights)
    network = build()
    network.load_state_dict(parameters[0])
    base.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json, trainer_name,
                               first.get("inference_allowed_mirroring_axes"))


@contextlib.contextmanager
def sam3d_trainers_visible():
    """Within the block, nnU-Net's trainer lookup also searches this package's ext-trainer folder (appended to
    ``nnUNet_extTrainer``; the variable is restored afterwards)."""
    import os
    from sam3d_nnunet.commands.ext_trainer_dir import ext_trainer_dir
    old = os.environ.get("nnUNet_extTrainer")
    ours = ext_trainer_dir()
    paths = [p for p in (old or "").split(os.pathsep) if p]
    if ours not in paths:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(paths + [ours])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("nnUNet_extTrainer", None)
        else:
            os.environ["nnUNet_extTrainer"] = old
