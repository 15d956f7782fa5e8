"""Interactive prompted segmentation of one image at a time, and the prediction helpers ``predict`` shares.

::

    from sam3d_nnunet.inference import InteractiveSession
    session = InteractiveSession.from_trained_model_folder(model_folder, folds=(0,), device="cpu")
    session.set_image("case_0000.nii.gz")        # or a list of channel files, a SimpleITK image, or
                                                 # session.set_image(array, spacing=(sz, sy, sx), origin=(x, y, z),
                                                 #                   direction=9 values)
    mask = session.add_click((z, y, x), positive=True, class_id=1)  # raw array-order voxel index -> label map
    session.add_click((z, y, x), positive=False)  # a correction of the current class
    session.add_click_world((x, y, z))           # physical point in mm (ITK / LPS), like a click file's "world"
    session.add_box((z0, y0, x0), (z1, y1, x1))  # equal coordinates along one axis: a 2D box on that slice
    session.add_scribble([(z, y, x), ...], positive=False); session.add_lasso([(z, y, x), ...])  # lasso: one slice
    session.set_mask(previous_mask)              # raw shape, [0, 1]; e.g. an edited session.class_mask()
    session.undo(); session.reset(); session.set_class(2); session.auto()   # auto: no-click prediction
    session.save_mask("out.nii.gz")              # the input's exact geometry, written atomically

What happens:

* ``set_image`` reads the image with the dataset's reader and preprocesses it ONCE with nnU-Net's preprocessor
  (transpose, crop to non-zero, resample, normalise), exactly as ``sam3d-nnunet predict`` and the trainer's
  validation do, so a click gives the same mask in the session and on the command line.
* Every class keeps its own state: its clicks (raw array-order voxel indices, positive or negative) and its
  probability map. A click re-predicts only its class, with all of that class's clicks, through
  ``PromptedPredictor`` (windows grow until the object is whole). The returned label map merges the classes as
  the predictor does (the class of highest probability above 0.5 wins) and is resampled to the raw image
  grid with nnU-Net's export code, so ``label_map`` and ``save_mask`` are in the input's geometry.
* Encoder features are cached per window (``CachingNetwork``: keyed by the window's content and the loaded
  parameter set), so further clicks only re-run the prompt encoder and the decoder; the encoder runs once per
  window region of an image. ``feature_cache_size`` windows are kept (least recently used dropped); one vit_b
  window at 128^3 holds about 130 MiB of features (16 windows: about 2 GiB).
* ``auto()`` predicts the current class (or, with ``all_classes=True``, every class) without clicks: the
  model's automatic mode over the whole volume with nnU-Net's sliding window (``predict_unprompted``). It
  replaces that class's clicks; a later click starts a click-based prediction again (the decoder sees clicks,
  not previous masks). A prompt-free model (``nnUNetTrainerSAM3D_auto``) only supports ``auto()``.
* Boxes, scribbles, lassos and a previous mask (``sam3d_nnunet.prompts.shapes``) join a class's prompts like
  clicks: they reduce to sampler points with a prompt type plus a dense prompt (built in the raw grid, mapped
  through the image's preprocessing), and re-predict the class without re-running the encoder. ``set_mask``
  replaces the class's earlier mask prompt. A bad prompt (outside the image, a box of zero extent, a scribble of
  fewer than two points, a self-intersecting or degenerate lasso, a mask of the wrong shape) raises
  ``InferenceInputError`` in one line naming it and changes nothing.
* ``undo()`` restores the state before the last ``add_click``/``add_box``/``add_scribble``/``add_lasso``/
  ``set_mask``/``auto``/``reset`` (no re-prediction);
  ``reset()`` clears the current class (``reset(all_classes=True)``: every class).

Errors (``InferenceInputError``, a ``ValueError``): an unreadable image (the file is named), a click outside
the image (the point and the image size are named), a class the model does not know, a click before
``set_image``, a prompted call on a prompt-free model, a missing model folder or fold (the path is named).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from sam3d_nnunet.atomic import atomic_path
from sam3d_nnunet.inference.io import (
    ImageGeometry,
    InferenceInputError,
    _quiet,
    geometry_from_properties,
    read_images,
    reader_uses_itk_index_order,
)
from sam3d_nnunet.inference.prompted_predictor import (
    ClassPrompt,
    PromptedPredictor,
    class_prompt_to_preprocessed,
    merge_class_probabilities,
)
from sam3d_nnunet.prompts.shapes import (BoxPrompt, ClickPrompt, LassoPrompt, MaskPrompt, Prompt, PromptError,
                                         ScribblePrompt, validate_prompt)

PathLike = Union[str, os.PathLike]
_EDGE_TOL = 1e-6


# ============================================================================================ feature cache
class CachingNetwork(nn.Module):
    """A SAM3DNet-like network whose ``encode`` results are kept across calls.

    The key is the window itself (its shape, a checksum, then an exact ``torch.equal``) plus the parameter set
    loaded with ``load_state_dict`` (folds of an ensemble are told apart by the identity of their state dicts),
    so a cached feature is only ever returned for the same input under the same weights. ``decode``,
    ``forward`` and every other attribute are the wrapped network's; ``state_dict``/``load_state_dict`` use the
    wrapped network's names. ``clear()`` empties the cache (the session does it for every new image).
    """

    def __init__(self, network: nn.Module, capacity: int = 16):
        super().__init__()
        self.network = network
        self.capacity = max(1, int(capacity))
        self._cache: "OrderedDict[int, Tuple[tuple, torch.Tensor, object]]" = OrderedDict()
        self._next_key = 0
        self._known_parameters: List[dict] = []
        self._generation = -1  # the weights the network came with
        self.encoder_runs = 0
        self.cache_hits = 0

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or "_modules" not in self.__dict__ or "network" not in self._modules:
                raise
            return getattr(self._modules["network"], name)

    def clear(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------------ the network interface
    def encode(self, image: torch.Tensor):
        signature = (self._generation, tuple(image.shape), str(image.device), image.dtype,
                     float(image.detach().double().sum()))
        for key, (sig, window, feats) in self._cache.items():
            if sig == signature and torch.equal(window, image):
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return feats
        feats = self.network.encode(image)
        self.encoder_runs += 1
        self._cache[self._next_key] = (signature, image.detach().clone(), feats)
        self._next_key += 1
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return feats

    def decode(self, *args, **kwargs):
        return self.network.decode(*args, **kwargs)

    def forward(self, *args, **kwargs):
        return self.network(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, *args, **kwargs):
        for i, known in enumerate(self._known_parameters):
            if known is state_dict:
                self._generation = i
                break
        else:
            self._known_parameters.append(state_dict)
            self._generation = len(self._known_parameters) - 1
        return self.network.load_state_dict(state_dict, strict, *args, **kwargs)

    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)


# ============================================================================================ model folders
def check_model_folder(model_folder: PathLike, folds: Optional[Sequence[Union[int, str]]] = (0,),
                       checkpoint_name: str = "checkpoint_final.pth") -> List[Union[int, str]]:
    """Check a trained model folder (``<trainer>__<plans>__<configuration>``) before loading it; returns the folds
    (``None``: every ``fold_X`` holding ``checkpoint_name``). Raises ``InferenceInputError`` naming the missing
    path (folder, ``plans.json``, ``dataset.json``, ``fold_X``, checkpoint)."""
    folder = os.fspath(model_folder)
    if not os.path.isdir(folder):
        raise InferenceInputError(f"model folder '{folder}' does not exist")
    for name in ("plans.json", "dataset.json"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise InferenceInputError(f"'{os.path.join(folder, name)}' does not exist: '{folder}' is not a trained "
                                      f"nnU-Net model folder")
    available = sorted(d[len("fold_"):] for d in os.listdir(folder)
                       if d.startswith("fold_") and os.path.isfile(os.path.join(folder, d, checkpoint_name)))
    if folds is None:
        if not available:
            raise InferenceInputError(f"model folder '{folder}' has no fold_X/{checkpoint_name}")
        return [f if f == "all" else int(f) for f in available]
    out: List[Union[int, str]] = []
    for f in folds:
        f = "all" if str(f) == "all" else f
        try:
            f = f if f == "all" else int(f)
        except (TypeError, ValueError):
            raise InferenceInputError(f"fold {f!r} is neither an integer nor 'all'") from None
        fold_dir = os.path.join(folder, f"fold_{f}")
        hint = f" (folds with {checkpoint_name}: {', '.join(available) or 'none'})"
        if not os.path.isdir(fold_dir):
            raise InferenceInputError(f"fold {f}: '{fold_dir}' does not exist{hint}")
        checkpoint = os.path.join(fold_dir, checkpoint_name)
        if not os.path.isfile(checkpoint):
            raise InferenceInputError(f"fold {f}: checkpoint '{checkpoint}' does not exist{hint}")
        out.append(f)
    if not out:
        raise InferenceInputError("no folds given")
    return out


def load_predictor(model_folder: PathLike, folds: Optional[Sequence[Union[int, str]]] = (0,),
                   checkpoint_name: str = "checkpoint_final.pth", device: Union[str, torch.device] = "cpu",
                   **kwargs) -> PromptedPredictor:
    """``PromptedPredictor.from_trained_model_folder`` after ``check_model_folder`` (clear errors for a missing
    folder, fold or checkpoint)."""
    import pickle

    folds = check_model_folder(model_folder, folds, checkpoint_name)
    device = check_device(device)
    try:
        with _quiet():
            return PromptedPredictor.from_trained_model_folder(os.fspath(model_folder), folds, checkpoint_name,
                                                               device, **kwargs)
    except (EOFError, pickle.UnpicklingError, RuntimeError, KeyError) as e:
        # a truncated or foreign checkpoint, weights of another network variant, an unknown trainer class
        raise InferenceInputError(f"cannot load the model in '{os.fspath(model_folder)}' (folds {list(folds)}, "
                                  f"{checkpoint_name}): {type(e).__name__}: {str(e).strip()[:500]}") from e


def check_device(device: Union[str, torch.device]) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InferenceInputError("device 'cuda' was asked for but PyTorch sees no CUDA device (use -device cpu)")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InferenceInputError("device 'mps' was asked for but is not available")
    return device


def check_class(class_id, predictor: PromptedPredictor, where: str = "") -> int:
    """``class_id`` as an int if it is a foreground label of the model's dataset, else ``InferenceInputError``."""
    known = [int(c) for c in predictor.label_manager.foreground_labels]
    c = None
    if not isinstance(class_id, (bool, np.bool_)):
        try:
            c = int(class_id)
            if isinstance(class_id, (float, np.floating)) and c != class_id:
                c = None
        except (TypeError, ValueError):
            c = None
    ok = c is not None
    if not ok or c not in known:
        names = {int(v): k for k, v in predictor.dataset_json.get("labels", {}).items() if isinstance(v, int)}
        listing = ", ".join(f"{k} ({names.get(k, '?')})" for k in known)
        raise InferenceInputError(f"{where}class {class_id!r} is not a class of this model (its classes: {listing})")
    return c


# ============================================================================================ prediction
def predict_unprompted(predictor: PromptedPredictor, data: torch.Tensor,
                       classes: Iterable[int]) -> Dict[int, torch.Tensor]:
    """Automatic (no-click) probabilities {class: [*shape]} of a PROMPTED model over the whole preprocessed
    volume: nnU-Net's sliding window (``predict_sliding_window_return_logits``; Gaussian blending, the
    predictor's step size and mirroring) on the network's ``forward(image)``, whose channel k is class k's
    logit margin over its background, so p_k = sigmoid(margin_k) (``PromptedPredictor.sliding_window_logits``,
    the predictor's precision policy). Several parameter sets (folds): averaged."""
    classes = [int(c) for c in classes]
    if not classes:
        return {}
    acc: Dict[int, torch.Tensor] = {}
    n = 0
    for _ in predictor.parameter_sets():
        margins = predictor.sliding_window_logits(data)
        n += 1
        for c in classes:
            p = torch.sigmoid(margins[c])
            acc[c] = p if c not in acc else acc[c] + p
    return {c: v / n for c, v in acc.items()}


def predict_case(predictor: PromptedPredictor, data: Union[np.ndarray, torch.Tensor],
                 prompts: Dict[int, Optional[ClassPrompt]]) -> torch.Tensor:
    """[num_classes, *shape] output of one preprocessed case for nnU-Net's export.

    ``prompts`` maps each class to predict to its clicks in PREPROCESSED coordinates, or to ``None`` (or a prompt
    without clicks) for the automatic mode of that class; classes not in ``prompts`` are background. The classes
    are merged as ``PromptedPredictor`` merges them (``merge_class_probabilities``). A prompt-free model
    (``predictor.prompted`` False) returns its own multi-class logits and accepts only automatic classes."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    data = data.float()
    if not predictor.prompted:
        if any(p is not None and not p.empty for p in prompts.values()):
            raise InferenceInputError(f"the model ({predictor.trainer_name}) is prompt-free: it takes no clicks "
                                      f"(use --auto / auto())")
        return predictor.predict_preprocessed(data, None)
    clicked = {c: p for c, p in prompts.items() if p is not None and not p.empty}
    automatic = [c for c, p in prompts.items() if p is None or p.empty]
    probabilities: Dict[int, torch.Tensor] = {}
    if clicked:
        out = predictor.predict_preprocessed(data, clicked)
        probabilities.update({c: out[c] for c in clicked})
    probabilities.update(predict_unprompted(predictor, data, automatic))
    return merge_class_probabilities(probabilities, predictor.label_manager.num_segmentation_heads,
                                     tuple(data.shape[1:]))


def check_raw_point(point, shape_zyx: Sequence[int], who: str = "click") -> np.ndarray:
    """A raw-image array-order point (z, y, x) as float64, or ``InferenceInputError`` if it is not 3 finite
    numbers or lies outside the image (more than half a voxel beyond the edge voxel centres)."""
    try:
        p = np.asarray(point, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InferenceInputError(f"{who}: point {point!r} is not 3 numbers") from None
    if p.size != 3 or not np.all(np.isfinite(p)):
        raise InferenceInputError(f"{who}: point {point!r} is not 3 finite numbers (z, y, x)")
    shape = np.asarray(shape_zyx, dtype=np.float64)
    if np.any(p < -0.5 - _EDGE_TOL) or np.any(p > shape - 0.5 + _EDGE_TOL):
        raise InferenceInputError(f"{who}: point (z, y, x) {p.tolist()} falls outside the image "
                                  f"(array shape {[int(s) for s in shape_zyx]})")
    return p


# ============================================================================================ the session
@dataclass
class _ClassState:
    prompts: List[Prompt] = field(default_factory=list)  # raw array-order, immutable; at most one MaskPrompt
    probability: Optional[torch.Tensor] = None  # preprocessed space, CPU float32
    mode: str = "empty"  # 'empty' | 'clicks' (any prompts) | 'auto'

    def copy(self) -> "_ClassState":
        return _ClassState(list(self.prompts), self.probability, self.mode)


class InteractiveSession:
    """Click-by-click segmentation of one image at a time; see the module docstring."""

    def __init__(self, network: nn.Module, plans_manager, configuration_manager, dataset_json: dict,
                 device: Union[str, torch.device] = "cpu", *, list_of_parameters: Optional[List[dict]] = None,
                 prompted: bool = True, trainer_name: str = "nnUNetTrainerSAM3D", max_windows_per_class: int = 8,
                 feature_cache_size: int = 16, use_mirroring: bool = False,
                 allowed_mirroring_axes: Optional[Tuple[int, ...]] = None):
        device = check_device(device)
        predictor = PromptedPredictor(network.to(device), plans_manager, configuration_manager, dataset_json, device,
                                      prompted=prompted, max_windows_per_class=max_windows_per_class,
                                      use_mirroring=use_mirroring, allowed_mirroring_axes=allowed_mirroring_axes,
                                      trainer_name=trainer_name, list_of_parameters=list_of_parameters)
        self._attach(predictor, feature_cache_size)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_predictor(cls, predictor: PromptedPredictor, feature_cache_size: int = 16) -> "InteractiveSession":
        """A session around an existing ``PromptedPredictor`` (its network gets wrapped in a ``CachingNetwork``)."""
        self = cls.__new__(cls)
        self._attach(predictor, feature_cache_size)
        return self

    @classmethod
    def from_trained_model_folder(cls, model_folder: PathLike, folds: Optional[Sequence[Union[int, str]]] = (0,),
                                  checkpoint_name: str = "checkpoint_final.pth",
                                  device: Union[str, torch.device] = "cpu", feature_cache_size: int = 16,
                                  **predictor_kwargs) -> "InteractiveSession":
        """Load ``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>`` (folds averaged)."""
        predictor = load_predictor(model_folder, folds, checkpoint_name, device, **predictor_kwargs)
        return cls.from_predictor(predictor, feature_cache_size)

    def _attach(self, predictor: PromptedPredictor, feature_cache_size: int) -> None:
        if not isinstance(predictor.network, CachingNetwork):
            predictor.network = CachingNetwork(predictor.network,
                                               max(int(feature_cache_size), predictor.max_windows_per_class))
        self.predictor = predictor
        self.network: CachingNetwork = predictor.network
        self.plans_manager = predictor.plans_manager
        self.configuration_manager = predictor.configuration_manager
        self.dataset_json = predictor.dataset_json
        self.label_manager = predictor.label_manager
        self.classes: List[int] = [int(c) for c in self.label_manager.foreground_labels]
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        self.num_input_channels = determine_num_input_channels(self.plans_manager, self.configuration_manager,
                                                               self.dataset_json)
        self._current_class = self.classes[0]
        self._data: Optional[torch.Tensor] = None
        self._properties: Optional[dict] = None
        self._raw_shape: Optional[Tuple[int, ...]] = None
        self._geometry: Optional[ImageGeometry] = None
        self._writer = None
        self._image_name = ""
        self._states: Dict[int, _ClassState] = {}
        self._model_logits: Optional[torch.Tensor] = None  # prompt-free models: their own multi-class logits
        self._history: List[Tuple[Dict[int, _ClassState], Optional[torch.Tensor]]] = []
        self._label_map: Optional[np.ndarray] = None

    # ------------------------------------------------------------------ image
    def set_image(self, image, spacing: Optional[Sequence[float]] = None,
                  origin: Optional[Sequence[float]] = None, direction: Optional[Sequence[float]] = None
                  ) -> "InteractiveSession":
        """Load and preprocess an image; forgets the previous image's clicks, masks and cached features.

        ``image``: a file path, a list of per-channel file paths (``case_0000.nii.gz``, ``case_0001.nii.gz``, ...),
        a ``SimpleITK.Image``, or a numpy array (z, y, x) / (channels, z, y, x) with ``spacing`` in ARRAY order
        (sz, sy, sx) mm (required), ``origin`` (x, y, z) mm and ``direction`` (9 values, row-major) in ITK order
        (default 0 and identity)."""
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

        reader_class = self.plans_manager.image_reader_writer_class
        if isinstance(image, (str, os.PathLike)) or (isinstance(image, (list, tuple)) and image
                                                      and all(isinstance(f, (str, os.PathLike)) for f in image)):
            files = [os.fspath(image)] if isinstance(image, (str, os.PathLike)) else [os.fspath(f) for f in image]
            if spacing is not None or origin is not None or direction is not None:
                raise InferenceInputError("spacing/origin/direction are read from the image file; pass them only "
                                          "with an array")
            data, properties = read_images(files, reader_class)
            geometry = None
            if reader_uses_itk_index_order(reader_class):
                geometry = geometry_from_properties(properties, data.shape[1:], files)
            writer = reader_class()
            name = files[0]
        else:
            if hasattr(image, "GetSize") and hasattr(image, "GetSpacing"):  # a SimpleITK image
                import SimpleITK as sitk
                if spacing is not None or origin is not None or direction is not None:
                    raise InferenceInputError("a SimpleITK image carries its own spacing/origin/direction")
                geometry = ImageGeometry.from_sitk(image)
                array = sitk.GetArrayFromImage(image)
            else:
                array = np.asarray(image)
                if spacing is None:
                    raise InferenceInputError("an image given as an array needs spacing=(sz, sy, sx) in mm (array "
                                              "order)")
                if array.ndim not in (3, 4):
                    raise InferenceInputError(f"an image array must be (z, y, x) or (channels, z, y, x), got shape "
                                              f"{array.shape}")
                geometry = ImageGeometry.from_array_shape(
                    array.shape[-3:], spacing, origin if origin is not None else (0.0, 0.0, 0.0),
                    direction if direction is not None else (1, 0, 0, 0, 1, 0, 0, 0, 1))
            data = np.asarray(array, dtype=np.float32)
            data = data[None] if data.ndim == 3 else data
            if data.ndim != 4:
                raise InferenceInputError(f"expected a 3D image, got an array of shape {array.shape}")
            if not np.all(np.isfinite(data)):
                raise InferenceInputError("the image array contains NaN or infinite values")
            properties = {"spacing": list(geometry.spacing[::-1]),
                          "sitk_stuff": {"spacing": geometry.spacing, "origin": geometry.origin,
                                         "direction": geometry.direction}}
            writer = SimpleITKIO()
            name = "<array>"
        if data.shape[0] != self.num_input_channels:
            raise InferenceInputError(f"image {name}: {data.shape[0]} channel(s), the model expects "
                                      f"{self.num_input_channels} ({self.dataset_json.get('channel_names')})")
        raw_shape = tuple(int(s) for s in data.shape[1:])
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        with _quiet():
            pre, _, properties = preprocessor.run_case_npy(data, None, properties, self.plans_manager,
                                                           self.configuration_manager, self.dataset_json)
        self._data = torch.from_numpy(np.ascontiguousarray(pre)).float()
        self._properties = properties
        self._raw_shape = raw_shape
        self._geometry = geometry
        self._writer = writer
        self._image_name = name
        self._states = {c: _ClassState() for c in self.classes}
        self._model_logits = None
        self._history = []
        self._label_map = None
        self.network.clear()
        return self

    def _require_image(self) -> None:
        if self._data is None:
            raise InferenceInputError("no image: call set_image(...) first")

    @property
    def image_shape(self) -> Tuple[int, ...]:
        """Raw image array shape (z, y, x)."""
        self._require_image()
        return self._raw_shape

    @property
    def geometry(self) -> Optional[ImageGeometry]:
        """The image's ITK geometry (None for readers whose arrays are not ITK-ordered)."""
        return self._geometry

    @property
    def preprocessed_shape(self) -> Tuple[int, ...]:
        self._require_image()
        return tuple(self._data.shape[1:])

    # ------------------------------------------------------------------ classes
    @property
    def current_class(self) -> int:
        return self._current_class

    def set_class(self, class_id: int) -> "InteractiveSession":
        self._current_class = check_class(class_id, self.predictor)
        return self

    def _class(self, class_id) -> int:
        return self._current_class if class_id is None else check_class(class_id, self.predictor)

    # ------------------------------------------------------------------ clicks
    def add_click(self, point_zyx: Sequence[float], positive: bool = True,
                  class_id: Optional[int] = None) -> np.ndarray:
        """Add a click at a raw-image array-order voxel index (z, y, x) (continuous values allowed) for
        ``class_id`` (default: the current class; a given class becomes the current one), re-predict that class
        from all its clicks and return the label map (raw geometry)."""
        self._require_image()
        c = self._class(class_id)
        if not self.predictor.prompted:
            raise InferenceInputError(f"the model ({self.predictor.trainer_name}) is prompt-free: it takes no clicks; "
                                      f"use auto()")
        p = check_raw_point(point_zyx, self._raw_shape, f"click on {self._image_name}")
        if not isinstance(positive, (bool, np.bool_)):
            raise InferenceInputError(f"positive must be True or False, got {positive!r}")
        return self.add_prompt(ClickPrompt(p, bool(positive)), c)

    def add_box(self, corner_zyx: Sequence[float], opposite_corner_zyx: Sequence[float], positive: bool = True,
                class_id: Optional[int] = None) -> np.ndarray:
        """An axis-aligned box between two raw array-order corners (z, y, x), both inside; equal coordinates along
        one axis make a 2D box on that slice ("the object in this slice and around it"). Returns the label map."""
        return self.add_prompt(lambda: BoxPrompt(corner_zyx, opposite_corner_zyx, positive), class_id)

    def add_scribble(self, points_zyx: Sequence[Sequence[float]], positive: bool = True,
                     class_id: Optional[int] = None) -> np.ndarray:
        """A polyline (>= 2 raw array-order points (z, y, x), 3D or on one slice): positive = inside the object,
        negative = outside it. Returns the label map."""
        return self.add_prompt(lambda: ScribblePrompt(points_zyx, positive), class_id)

    def add_lasso(self, points_zyx: Sequence[Sequence[float]], positive: bool = True,
                  class_id: Optional[int] = None) -> np.ndarray:
        """A closed contour on one slice (all points share one coordinate; >= 3 distinct points, not
        self-intersecting): positive = the object is in there, negative = not in there. Returns the label map."""
        return self.add_prompt(lambda: LassoPrompt(points_zyx, positive), class_id)

    def set_mask(self, mask: np.ndarray, class_id: Optional[int] = None) -> np.ndarray:
        """A previous mask of the raw image's shape (z, y, x): the last prediction (e.g. ``class_mask()``) or an
        edited one, binary or probabilities in [0, 1]; replaces the class's earlier mask prompt, keeps its other
        prompts. Returns the label map."""
        return self.add_prompt(lambda: MaskPrompt(mask), class_id)

    def add_prompt(self, prompt: Union[Prompt, Callable[[], Prompt]], class_id: Optional[int] = None) -> np.ndarray:
        """Add any prompt of ``sam3d_nnunet.prompts.shapes`` (raw array order) to ``class_id`` (default: the current
        class; a given class becomes the current one), re-predict that class from all its prompts (the encoder
        does not run again for windows already seen) and return the label map. A bad prompt raises
        ``InferenceInputError`` in one line naming it, and changes nothing (undo covers every prompt)."""
        self._require_image()
        c = self._class(class_id)
        if not self.predictor.prompted:
            raise InferenceInputError(f"the model ({self.predictor.trainer_name}) is prompt-free: it takes no prompts; "
                                      f"use auto()")
        try:
            prompt = validate_prompt(prompt() if callable(prompt) else prompt, self._raw_shape)
        except PromptError as e:
            raise InferenceInputError(f"{e} (on {self._image_name})") from None
        state = self._states[c]
        prompts = [p for p in state.prompts if not isinstance(prompt, MaskPrompt) or not isinstance(p, MaskPrompt)]
        probability = self._predict_prompts(prompts + [prompt], c)
        self._current_class = c
        self._push_history([c])
        self._states[c] = _ClassState(prompts + [prompt], probability, "clicks")
        self._label_map = None
        return self.label_map

    def add_click_world(self, point_xyz_mm: Sequence[float], positive: bool = True,
                        class_id: Optional[int] = None) -> np.ndarray:
        """``add_click`` at a physical point (x, y, z) in mm (ITK/LPS, what ``TransformIndexToPhysicalPoint``
        returns; the image's origin, spacing and direction are applied)."""
        self._require_image()
        if self._geometry is None:
            raise InferenceInputError("world clicks need an image whose arrays follow its ITK voxel grid "
                                      "(SimpleITK reader); use add_click with array indices")
        try:
            pt = np.asarray(point_xyz_mm, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            pt = np.array([np.nan])
        if pt.size != 3 or not np.all(np.isfinite(pt)):
            raise InferenceInputError(f"world click: {point_xyz_mm!r} is not 3 finite numbers (x, y, z) in mm")
        index_xyz = np.asarray(self._geometry.TransformPhysicalPointToContinuousIndex(pt))
        size = np.asarray(self._geometry.size, dtype=np.float64)
        if np.any(index_xyz < -0.5 - _EDGE_TOL) or np.any(index_xyz > size - 0.5 + _EDGE_TOL):
            raise InferenceInputError(f"world click on {self._image_name}: {pt.tolist()} mm falls outside the image "
                                      f"(continuous index (x, y, z) {np.round(index_xyz, 3).tolist()}, size "
                                      f"{list(self._geometry.size)})")
        return self.add_click(index_xyz[::-1], positive, class_id)

    def _predict_prompts(self, prompts: List[Prompt], class_id: int) -> torch.Tensor:
        pre = class_prompt_to_preprocessed(ClassPrompt.from_prompts(prompts, self._raw_shape, validate=False),
                                           self._properties, self.plans_manager.transpose_forward,
                                           self._data.shape[1:])
        out = self.predictor.predict_preprocessed(self._data, {class_id: pre})
        return out[class_id].clone()

    def clicks(self, class_id: Optional[int] = None) -> List[Tuple[Tuple[float, float, float], bool]]:
        """The clicks of a class: [((z, y, x), positive), ...] in raw array order."""
        return [(p.point, p.positive) for p in self.prompts(class_id) if isinstance(p, ClickPrompt)]

    def prompts(self, class_id: Optional[int] = None) -> List[Prompt]:
        """Every prompt of a class in the order given (``ClickPrompt``, ``BoxPrompt``, ``ScribblePrompt``,
        ``LassoPrompt``, ``MaskPrompt``; raw array order)."""
        state = self._states.get(self._class(class_id)) if self._data is not None else None
        return [] if state is None else list(state.prompts)

    # ------------------------------------------------------------------ automatic mode, undo, reset
    def auto(self, class_id: Optional[int] = None, all_classes: bool = False) -> np.ndarray:
        """No-click prediction of the current class (or ``class_id``; ``all_classes=True``: every class) over the
        whole volume; replaces those classes' clicks. Returns the label map."""
        self._require_image()
        if not self.predictor.prompted:
            self._push_history([])
            self._model_logits = self.predictor.predict_preprocessed(self._data, None).float().cpu()
            self._label_map = None
            return self.label_map
        classes = list(self.classes) if all_classes else [self._class(class_id)]
        if not all_classes:
            self._current_class = classes[0]
        self._push_history(classes)
        probabilities = predict_unprompted(self.predictor, self._data, classes)
        for c in classes:
            self._states[c] = _ClassState([], probabilities[c], "auto")
        self._label_map = None
        return self.label_map

    def reset(self, class_id: Optional[int] = None, all_classes: bool = False) -> np.ndarray:
        """Clear the clicks and mask of the current class (or ``class_id``, or every class); undoable."""
        self._require_image()
        classes = list(self.classes) if all_classes else [self._class(class_id)]
        self._push_history(classes)
        for c in classes:
            self._states[c] = _ClassState()
        if all_classes:
            self._model_logits = None
        self._label_map = None
        return self.label_map

    def undo(self) -> np.ndarray:
        """Restore the state before the last prompt (add_click, add_box, add_scribble, add_lasso, set_mask), auto or
        reset (nothing to undo: unchanged)."""
        self._require_image()
        if self._history:
            saved, logits = self._history.pop()
            self._states.update(saved)
            self._model_logits = logits
            self._label_map = None
        return self.label_map

    @property
    def can_undo(self) -> bool:
        return bool(self._history)

    def _push_history(self, classes: Iterable[int]) -> None:
        self._history.append(({c: self._states[c].copy() for c in classes}, self._model_logits))

    # ------------------------------------------------------------------ results
    def merged_output(self) -> torch.Tensor:
        """[num_classes, *preprocessed shape]: what ``predict`` would export for the current state."""
        self._require_image()
        if self._model_logits is not None:
            return self._model_logits
        probabilities = {c: s.probability for c, s in self._states.items() if s.probability is not None}
        return merge_class_probabilities(probabilities, self.label_manager.num_segmentation_heads,
                                         tuple(self._data.shape[1:]))

    @property
    def label_map(self) -> np.ndarray:
        """The merged label map in the raw image's array order and grid (uint8, or uint16 for >254 classes)."""
        self._require_image()
        if self._label_map is None:
            if self._model_logits is None and all(s.probability is None for s in self._states.values()):
                dtype = np.uint8 if len(self.classes) < 255 else np.uint16
                self._label_map = np.zeros(self._raw_shape, dtype=dtype)
            else:
                from nnunetv2.inference.export_prediction import \
                    convert_predicted_logits_to_segmentation_with_correct_shape
                seg = convert_predicted_logits_to_segmentation_with_correct_shape(
                    self.merged_output(), self.plans_manager, self.configuration_manager, self.label_manager,
                    self._properties, return_probabilities=False, num_threads_torch=max(1, torch.get_num_threads()))
                self._label_map = np.asarray(seg)
        return self._label_map

    def class_mask(self, class_id: Optional[int] = None) -> np.ndarray:
        """Boolean mask of one class in the label map (raw geometry)."""
        return self.label_map == self._class(class_id)

    def save_mask(self, path: PathLike) -> str:
        """Write the label map with the input's exact geometry (the dataset's writer, as nnU-Net's export), to a
        temporary name in the same folder that is then renamed onto ``path``."""
        self._require_image()
        path = os.fspath(path)
        ending = self.dataset_json.get("file_ending")
        with atomic_path(path, ending if ending and path.endswith(ending) else None) as tmp:
            self._writer.write_seg(self.label_map, tmp, self._properties)
        return path


__all__ = ["InteractiveSession", "CachingNetwork", "check_model_folder", "load_predictor", "check_device",
           "check_class", "predict_unprompted", "predict_case", "check_raw_point"]
