"""The dock widget: a trained SAM3D model, an image, and clicks that update a mask as you make them.

Workflow (every model call runs in a worker thread, see ``worker.py``; the status line says what runs):

1. **Model**: the nnU-Net results folder (``$nnUNet_results`` by default), then dataset, trainer, plans,
   configuration, folds (several are ensembled), checkpoint and device; *Load model*.
2. **Image**: an image layer of the viewer, or *Open file...* (NIfTI / NRRD / MHA read by the project's reader:
   array (z, y, x), layer ``scale`` = spacing in array order, direction and origin in the layer's affine).
   *Use image* preprocesses it once (nnU-Net's preprocessing, as ``sam3d-nnunet predict`` does). A layer read
   from a file (this plug-in's reader or *Open file...*) is given to the model as that file, so the voxel
   grid, the clicks and the saved mask are exactly those of the command line; any other 3D layer is given as
   its array with the spacing, origin and direction of the layer's transform.
3. **Clicks**: a click in the 2D view (no drag) adds a click for the chosen class on the voxel under the mouse:
   positive (green) or negative (red) by the *Positive / Negative* switch, and Shift+click gives the other
   polarity. The layer "SAM3D clicks" shows the class's clicks, "SAM3D mask" the label map; both share the
   image layer's transform, so their data coordinates are the image's voxel indices. Clicks can also be
   added to the points layer from code (``widget.points_layer.add(...)`` with its ``feature_defaults``
   ``positive``) or in its own *add points* mode.
4. **Drawn prompts** (the layer "SAM3D boxes, lassos, scribbles", same transform as the image): *Box* draws a
   rectangle on the current slice (a 2D box on that slice, ``add_box``), *Lasso* a freehand closed contour on
   it (``add_lasso``), *Scribble* a path (``add_scribble``), each with the *Positive / Negative* polarity (green /
   red). The layer's own tools work too (a polygon is a lasso, a line or a path a scribble). *Use edited mask as
   prompt* sends the mask layer's voxels of the class, as painted or erased by hand, as the previous-mask
   prompt (``set_mask``). A bad prompt (e.g. a lasso that crosses itself) is refused: the status line says why
   and nothing changes.
5. *Automatic* predicts the class over the whole volume without clicks; a click afterwards predicts the class
   again from the clicks (the model sees clicks, not the automatic mask). *Undo* goes back one step (click, box,
   lasso, scribble, mask prompt, automatic, reset); *Reset class* clears the class. *Save mask...* writes the session's label map with the
   input's exact size, spacing, origin and direction (painting on the mask layer by hand is not saved; the
   status line says so when it happens).
"""
from __future__ import annotations

import os
import time
from typing import Optional, Sequence

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from sam3d_nnunet.napari_plugin.io import (
    META_GEOMETRY,
    META_SOURCE,
    VOLUME_ENDINGS,
    direction_is_oblique,
    keep_triton_out_of_the_gui_process,
    layer_data_tuple,
)
from sam3d_nnunet.napari_plugin.session_adapter import (
    SessionAdapter,
    Snapshot,
    available_folds,
    find_datasets,
    find_model_folders,
    parse_folds,
)
from sam3d_nnunet.napari_plugin.worker import OperationQueue

keep_triton_out_of_the_gui_process()  # before the model stack loads in an OpenGL (Mesa) process; see io.py

POSITIVE_COLOR = np.array([0.1, 0.9, 0.2, 1.0])
NEGATIVE_COLOR = np.array([1.0, 0.15, 0.15, 1.0])
CLASS_COLORS = ("dodgerblue", "magenta", "orange", "cyan", "yellow", "mediumpurple", "lightpink", "tan")
POINTS_NAME = "SAM3D clicks"
LABELS_NAME = "SAM3D mask"
SHAPES_NAME = "SAM3D boxes, lassos, scribbles"
#: the widget's draw buttons: (label, shapes-layer mode, what it draws, tooltip)
DRAW_MODES = (("Box", "add_rectangle", "box", "drag a rectangle on the current slice: the object is in this box"),
              ("Lasso", "add_polygon_lasso", "lasso", "draw a closed contour on the current slice (freehand)"),
              ("Scribble", "add_path", "scribble", "click the points of a path; double-click or Escape ends it"))
#: napari shape type -> session prompt
SHAPE_PROMPTS = {"rectangle": "box", "polygon": "lasso", "path": "scribble", "line": "scribble"}
CLICK_DRAG_TOLERANCE = 5  # screen pixels: a press and release further apart is a pan, not a click


def _layer_transform(layer) -> dict:
    """The napari transform of ``layer`` as keyword arguments for another layer of the same ndim."""
    return {"scale": tuple(layer.scale), "translate": tuple(layer.translate), "rotate": np.asarray(layer.rotate),
            "shear": np.asarray(layer.shear), "affine": np.asarray(layer.affine.affine_matrix)}


def _geometry_from_layer_transform(layer):
    """(spacing (z, y, x), origin (x, y, z), direction (ITK 9-tuple)) from a 3D layer's data-to-world
    transform (public API only: napari hands plug-ins proxies without private attributes), for a layer without a
    source file; the direction falls back to identity if the transform has shear."""
    zero = np.asarray(layer.data_to_world(np.zeros(3)), dtype=float)
    linear = np.stack([np.asarray(layer.data_to_world(np.eye(3)[i]), dtype=float) - zero for i in range(3)], 1)
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        spacing = np.abs(np.asarray(layer.scale, dtype=float))
    rotation = linear / spacing[None]
    if not np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-5):
        rotation = np.eye(3)
    direction_itk = rotation[::-1, ::-1]  # array order -> ITK (x, y, z) order
    return tuple(spacing), tuple(zero[::-1]), tuple(direction_itk.ravel())


def _rounded(point) -> tuple:
    return tuple(round(float(v), 1) for v in point)


class SAM3DWidget(QWidget):
    """Interactive SAM3D segmentation dock widget; see the module docstring."""

    def __init__(self, napari_viewer, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.backend: Optional[SessionAdapter] = None
        self.image_layer = None    # the layer whose image the session holds
        self.points_layer = None
        self.labels_layer = None
        self.shapes_layer = None
        self._shapes_taken = 0     # shapes of the layer already given to the session (or shown from it)
        self.queue = OperationQueue(self)
        self._syncing = False
        self._image_ready = False
        self._last_snapshot: Optional[Snapshot] = None
        self._voxel_ml = 0.0
        self._model_folders = []
        self.last_status = ""
        self._build_ui()
        self.queue.started.connect(self._on_started)
        self.queue.finished.connect(self._on_finished)
        self.queue.failed.connect(self._on_failed)
        self.queue.idle.connect(self._on_idle)
        self.viewer.layers.events.inserted.connect(self._refresh_image_layers)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.layers.events.changed.connect(self._refresh_image_layers)
        self.viewer.mouse_drag_callbacks.append(self._on_mouse_drag)
        viewer, callback = self.viewer, self._on_mouse_drag
        self.destroyed.connect(lambda *_: viewer.mouse_drag_callbacks.remove(callback)
                               if callback in viewer.mouse_drag_callbacks else None)
        self._refresh_image_layers()
        self._refresh_datasets()
        self._update_enabled()
        self._set_status("Choose a trained model and an image.")

    # ================================================================== UI
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        # ---- model
        model_box = QGroupBox("Model")
        box_layout = QVBoxLayout(model_box)
        form = QFormLayout()
        box_layout.addLayout(form)
        self.results_edit = QLineEdit(os.environ.get("nnUNet_results", ""))
        self.results_edit.setPlaceholderText("nnU-Net results folder ($nnUNet_results)")
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse_results)
        row = QHBoxLayout()
        row.addWidget(self.results_edit, 1)
        row.addWidget(browse)
        form.addRow("Results", row)
        self.results_edit.editingFinished.connect(self._refresh_datasets)
        self.dataset_combo = QComboBox()
        self.trainer_combo = QComboBox()
        self.plans_combo = QComboBox()
        self.configuration_combo = QComboBox()
        form.addRow("Dataset", self.dataset_combo)
        form.addRow("Trainer", self.trainer_combo)
        form.addRow("Plans", self.plans_combo)
        form.addRow("Configuration", self.configuration_combo)
        self.dataset_combo.currentIndexChanged.connect(self._refresh_models)
        self.trainer_combo.currentIndexChanged.connect(self._refresh_plans)
        self.plans_combo.currentIndexChanged.connect(self._refresh_configurations)
        self.configuration_combo.currentIndexChanged.connect(self._refresh_folds)
        self.folds_edit = QLineEdit("0")
        self.folds_edit.setToolTip("fold numbers separated by commas (several are ensembled), or 'all'")
        self.folds_hint = QLabel("")
        row = QHBoxLayout()
        row.addWidget(self.folds_edit, 1)
        row.addWidget(self.folds_hint)
        form.addRow("Folds", row)
        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.setEditable(True)
        self.checkpoint_combo.addItems(["checkpoint_final.pth", "checkpoint_best.pth"])
        self.device_combo = QComboBox()
        self.device_combo.addItems(self._devices())
        row = QHBoxLayout()
        row.addWidget(self.checkpoint_combo, 1)
        row.addWidget(self.device_combo)
        form.addRow("Checkpoint", row)
        self.load_button = QPushButton("Load model")
        self.load_button.clicked.connect(lambda: self.load_model())
        self.model_label = QLabel("no model loaded")
        self.model_label.setWordWrap(True)
        box_layout.addWidget(self.load_button)
        box_layout.addWidget(self.model_label)
        layout.addWidget(model_box)
        # ---- image
        image_box = QGroupBox("Image")
        form = QFormLayout(image_box)
        self.image_combo = QComboBox()
        open_button = QPushButton("Open file...")
        open_button.clicked.connect(lambda: self.open_image())
        row = QHBoxLayout()
        row.addWidget(self.image_combo, 1)
        row.addWidget(open_button)
        form.addRow("Layer", row)
        self.use_image_button = QPushButton("Use image")
        self.use_image_button.clicked.connect(lambda: self.use_image_layer())
        form.addRow(self.use_image_button)
        layout.addWidget(image_box)
        # ---- prompts
        prompt_box = QGroupBox("Prompts")
        form = QFormLayout(prompt_box)
        self.class_combo = QComboBox()
        self.class_combo.currentIndexChanged.connect(self._on_class_changed)
        form.addRow("Class", self.class_combo)
        self.positive_radio = QRadioButton("Positive")
        self.negative_radio = QRadioButton("Negative")
        self.positive_radio.setStyleSheet("color: rgb(40, 220, 60);")
        self.negative_radio.setStyleSheet("color: rgb(255, 60, 60);")
        self.positive_radio.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.positive_radio)
        group.addButton(self.negative_radio)
        self._polarity_group = group
        row = QHBoxLayout()
        row.addWidget(self.positive_radio)
        row.addWidget(self.negative_radio)
        row.addStretch(1)
        form.addRow("Polarity", row)
        self.click_checkbox = QCheckBox("Click in the view to segment (Shift+click: other polarity)")
        self.click_checkbox.setChecked(True)
        form.addRow(self.click_checkbox)
        row = QHBoxLayout()
        self.draw_buttons = {}
        for text, mode, what, tip in DRAW_MODES:
            b = QPushButton(text)
            b.setToolTip(tip)
            b.clicked.connect(lambda _=False, m=mode, w=what: self.start_drawing(m, w))
            self.draw_buttons[mode] = b
            row.addWidget(b)
        form.addRow("Draw", row)
        self.mask_prompt_button = QPushButton("Use edited mask as prompt")
        self.mask_prompt_button.setToolTip("send the mask layer's voxels of this class (painted / erased by hand) to "
                                           "the model as the previous mask")
        self.mask_prompt_button.clicked.connect(lambda: self.use_mask_as_prompt())
        form.addRow(self.mask_prompt_button)
        self.auto_button = QPushButton("Automatic")
        self.auto_button.setToolTip("predict the class over the whole volume without clicks")
        self.undo_button = QPushButton("Undo")
        self.reset_button = QPushButton("Reset class")
        self.auto_button.clicked.connect(lambda: self.auto())
        self.undo_button.clicked.connect(lambda: self.undo())
        self.reset_button.clicked.connect(lambda: self.reset())
        row = QHBoxLayout()
        for b in (self.auto_button, self.undo_button, self.reset_button):
            row.addWidget(b)
        form.addRow(row)
        self.save_button = QPushButton("Save mask...")
        self.save_button.clicked.connect(lambda: self.save_mask())
        form.addRow(self.save_button)
        layout.addWidget(prompt_box)
        # ---- status
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy indicator
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(8)
        self.progress.setVisible(False)
        layout.addWidget(self.progress)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.setMinimumWidth(330)

    @staticmethod
    def _devices():
        devices = ["cpu"]
        try:
            import torch
            if torch.cuda.is_available():
                devices.insert(0, "cuda")
            if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                devices.append("mps")
        except Exception:  # noqa: BLE001 - no torch build with these backends: CPU only
            pass
        return devices

    # ================================================================== model selection
    def _browse_results(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "nnU-Net results folder", self.results_edit.text())
        if folder:
            self.results_edit.setText(folder)
            self._refresh_datasets()

    def _refresh_datasets(self) -> None:
        results = self.results_edit.text().strip()
        self.dataset_combo.blockSignals(True)
        self.dataset_combo.clear()
        self.dataset_combo.addItems(find_datasets(results))
        self.dataset_combo.blockSignals(False)
        self._refresh_models()

    def _refresh_models(self) -> None:
        results = self.results_edit.text().strip()
        dataset = self.dataset_combo.currentText()
        self._model_folders = find_model_folders(os.path.join(results, dataset)) if dataset else \
            find_model_folders(results)  # a dataset folder or a model folder given directly
        self._fill(self.trainer_combo, sorted({m.trainer for m in self._model_folders}),
                   prefer=("nnUNetTrainerSAM3D",))
        self._refresh_plans()

    def _refresh_plans(self) -> None:
        t = self.trainer_combo.currentText()
        self._fill(self.plans_combo, sorted({m.plans for m in self._model_folders if m.trainer == t}),
                   prefer=("SAM3DPlans",))
        self._refresh_configurations()

    def _refresh_configurations(self) -> None:
        t, p = self.trainer_combo.currentText(), self.plans_combo.currentText()
        self._fill(self.configuration_combo, sorted({m.configuration for m in self._model_folders
                                                     if m.trainer == t and m.plans == p}), prefer=("3d_fullres",))
        self._refresh_folds()

    def _refresh_folds(self) -> None:
        folder = self.selected_model_folder()
        folds = available_folds(folder) if folder else ()
        self.folds_hint.setText(f"available: {', '.join(folds)}" if folds else "")
        if folds:
            self.folds_edit.setText(",".join(folds))

    @staticmethod
    def _fill(combo: QComboBox, items: Sequence[str], prefer: Sequence[str] = ()) -> None:
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(list(items))
        for p in prefer:
            if p in items:
                combo.setCurrentText(p)
                break
        combo.blockSignals(False)

    def selected_model_folder(self) -> Optional[str]:
        t, p, c = (self.trainer_combo.currentText(), self.plans_combo.currentText(),
                   self.configuration_combo.currentText())
        for m in self._model_folders:
            if (m.trainer, m.plans, m.configuration) == (t, p, c):
                return m.path
        return None

    def load_model(self, model_folder: Optional[str] = None, folds=None, checkpoint_name: Optional[str] = None,
                   device: Optional[str] = None) -> None:
        """Load a trained model folder in the worker (default: the one chosen in the widget)."""
        model_folder = model_folder or self.selected_model_folder()
        if not model_folder:
            self._set_status("No trained model folder chosen: set the results folder, dataset, trainer, plans and "
                             "configuration.", error=True)
            return
        try:
            folds = parse_folds(self.folds_edit.text()) if folds is None else tuple(folds)
        except ValueError as e:
            self._set_status(f"Folds: {e}", error=True)
            return
        checkpoint_name = checkpoint_name or self.checkpoint_combo.currentText().strip() or "checkpoint_final.pth"
        device = device or self.device_combo.currentText()
        self.queue.submit(f"Loading {os.path.basename(os.path.normpath(model_folder))} fold(s) "
                          f"{','.join(map(str, folds))} on {device}", SessionAdapter.from_model_folder,
                          model_folder, folds, checkpoint_name, device, on_result=self.set_backend)

    def set_backend(self, backend: SessionAdapter) -> None:
        """Use ``backend`` (a ``SessionAdapter``) as the model. The current image, if any, is given to it."""
        self.backend = backend
        self._image_ready = False
        self.model_label.setText(f"Model: {backend.description}")
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        for c, name in backend.classes.items():
            self.class_combo.addItem(f"{c}: {name}", c)
        self.class_combo.blockSignals(False)
        self._set_status(f"Model ready: {backend.description}" +
                         ("" if backend.prompted else " (prompt-free: only Automatic)"))
        layer = self.image_layer if self.image_layer in self.viewer.layers else self._combo_layer()
        if layer is not None:
            self.use_image_layer(layer)
        self._update_enabled()

    # ================================================================== image
    def _image_layers(self):
        from napari.layers import Image
        return [layer for layer in self.viewer.layers
                if isinstance(layer, Image) and layer.ndim == 3 and not getattr(layer, "rgb", False)]

    def _refresh_image_layers(self, *_) -> None:
        current = self.image_combo.currentText()
        names = [layer.name for layer in self._image_layers()]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        elif self.image_layer is not None and self.image_layer.name in names:
            self.image_combo.setCurrentText(self.image_layer.name)
        self.image_combo.blockSignals(False)
        self._update_enabled()

    def _combo_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if layer is self.points_layer:
            self.points_layer = None
        if layer is self.shapes_layer:
            self.shapes_layer = None
        if layer is self.labels_layer:
            self.labels_layer = None
        if layer is self.image_layer:
            self.image_layer = None
            self._image_ready = False
            self._set_status("The image layer was removed: choose an image.")
        self._refresh_image_layers()

    def open_image(self, path: Optional[str] = None) -> None:
        """Read a NIfTI / NRRD / MHA file as the model reads it (worker), add it as an image layer and use it."""
        if path is None:
            pattern = " ".join(f"*{e}" for e in VOLUME_ENDINGS)
            path, _ = QFileDialog.getOpenFileName(self, "Open a 3D image", "", f"3D images ({pattern});;All (*)")
            if not path:
                return
        self.queue.submit(f"Reading {os.path.basename(path)}", layer_data_tuple, path,
                          on_result=self._add_read_layer)

    def _add_read_layer(self, layer_data) -> None:
        data, kwargs, _ = layer_data
        layer = self.viewer.add_image(data, **kwargs)
        self._refresh_image_layers()
        self.image_combo.setCurrentText(layer.name)
        geometry = kwargs["metadata"][META_GEOMETRY]
        if direction_is_oblique(geometry):
            self._set_status("Oblique direction matrix: the view shows the voxel grid (clicks and the saved mask "
                             "are unaffected).")
        if self.backend is not None:
            self.use_image_layer(layer)

    def use_image_layer(self, layer=None) -> None:
        """Give the image of ``layer`` (default: the one chosen in the widget) to the model (worker)."""
        layer = layer if layer is not None else self._combo_layer()
        if layer is None:
            self._set_status("No 3D image layer: open an image first.", error=True)
            return
        if self.backend is None:
            self._set_status("Load a model first.", error=True)
            return
        if layer.ndim != 3:
            self._set_status(f"Layer '{layer.name}' is {layer.ndim}D; the model needs a 3D volume.", error=True)
            return
        self.queue.clear_pending()
        self.image_layer = layer
        self._image_ready = False
        self._prepare_output_layers(layer)
        source = layer.metadata.get(META_SOURCE)
        geometry = layer.metadata.get(META_GEOMETRY)
        if geometry is not None:
            self._voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
        if source and os.path.isfile(source):
            self.queue.submit(f"Preprocessing {os.path.basename(source)}", self.backend.set_image_file, source,
                              on_result=self._on_image_set)
            return
        if geometry is not None:
            spacing, origin, direction = geometry.spacing[::-1], geometry.origin, geometry.direction
        else:
            spacing, origin, direction = _geometry_from_layer_transform(layer)
            self._voxel_ml = float(np.prod(spacing)) / 1000.0
        self.queue.submit(f"Preprocessing layer '{layer.name}'", self.backend.set_image_array,
                          np.asarray(layer.data), spacing, origin, direction, on_result=self._on_image_set)

    def _prepare_output_layers(self, image_layer) -> None:
        transform = _layer_transform(image_layer)
        shape = tuple(int(s) for s in image_layer.data.shape)
        for attr in ("points_layer", "labels_layer", "shapes_layer"):
            old = getattr(self, attr)
            if old is not None and old in self.viewer.layers:
                self.viewer.layers.remove(old)
            setattr(self, attr, None)
        size = 2.5 * float(np.max(image_layer.scale)) if image_layer.scale is not None else 5.0
        self.labels_layer = self.viewer.add_labels(np.zeros(shape, dtype=np.uint8), name=LABELS_NAME,
                                                   opacity=0.5, **transform)
        try:  # fixed, distinct class colours (not green/red: those are the clicks')
            from napari.utils.colormaps import DirectLabelColormap
            self.labels_layer.colormap = DirectLabelColormap(
                color_dict={None: "orange", 0: "transparent", **{i + 1: c for i, c in enumerate(CLASS_COLORS)}})
        except Exception:  # noqa: BLE001 - older napari: its default label colours
            pass
        import pandas as pd
        self.points_layer = self.viewer.add_points(
            np.zeros((0, 3)), ndim=3, name=POINTS_NAME, size=max(size, 4.0),
            features=pd.DataFrame({"positive": pd.Series([], dtype=bool)}),
            face_color=POSITIVE_COLOR, border_color="white", border_width=0.15, **transform)
        self.points_layer.feature_defaults = {"positive": True}
        self.points_layer.events.data.connect(self._on_points_data)
        self.shapes_layer = self.viewer.add_shapes(ndim=3, name=SHAPES_NAME, edge_width=max(size / 5, 1.0),
                                                   edge_color=POSITIVE_COLOR, face_color=[0, 0, 0, 0], **transform)
        self._shapes_taken = 0
        self.shapes_layer.events.data.connect(self._on_shapes_data)
        if hasattr(self.labels_layer.events, "paint"):
            self.labels_layer.events.paint.connect(lambda *_: self._set_status(
                "Painted by hand: press 'Use edited mask as prompt' to give it to the model; Save mask writes the "
                "model's mask, not hand edits (the next prompt, Undo or Reset replaces them).", error=True))
        self.viewer.layers.selection.active = image_layer  # clicks are taken in pan/zoom mode
        if hasattr(image_layer, "mode"):
            image_layer.mode = "pan_zoom"

    def _on_image_set(self, snapshot: Snapshot) -> None:
        self._image_ready = True
        self._apply_snapshot(snapshot)
        shape = "x".join(str(s) for s in snapshot.label_map.shape) if snapshot.label_map is not None else "?"
        self._set_status(f"Image ready ({shape} voxels, z,y,x). Click on the object (Shift+click: the other "
                         f"polarity) or press Automatic." + self._model_note())
        self._update_enabled()

    # ================================================================== clicks
    @property
    def positive(self) -> bool:
        """The polarity of a plain click (the Positive / Negative switch)."""
        return self.positive_radio.isChecked()

    @positive.setter
    def positive(self, value: bool) -> None:
        (self.positive_radio if value else self.negative_radio).setChecked(True)

    @property
    def current_class(self) -> Optional[int]:
        data = self.class_combo.currentData()
        return None if data is None else int(data)

    def _ready_for_clicks(self) -> bool:
        return (self.backend is not None and self._image_ready and self.points_layer is not None
                and self.backend.prompted)

    def _on_mouse_drag(self, viewer, event):
        """Viewer callback: a click without drag on the 2D view adds a click (Shift: other polarity)."""
        if not self.click_checkbox.isChecked() or not self._ready_for_clicks() or event.button != 1:
            return
        positive = self.positive != ("Shift" in event.modifiers)
        self.points_layer.feature_defaults = {"positive": positive}
        active = viewer.layers.selection.active
        mode = str(getattr(active, "mode", "pan_zoom"))
        if active is self.points_layer and mode == "add":
            return  # the points layer's own add mode adds it (with the polarity just set)
        if mode not in ("pan_zoom", "Mode.PAN_ZOOM"):
            return  # painting, selecting, transforming: not a prompt
        if viewer.dims.ndisplay != 2:
            self._set_status("Clicks are taken in the 2D view (toggle 2D/3D in the viewer's buttons).")
            return
        start = np.asarray(event.pos, dtype=float)
        yield
        while event.type == "mouse_move":
            yield
        if np.linalg.norm(np.asarray(event.pos, dtype=float) - start) > CLICK_DRAG_TOLERANCE:
            return  # a pan
        coords = np.asarray(self.points_layer.world_to_data(event.position), dtype=float)[-3:]
        self.add_click(coords, positive)

    def add_click(self, point_zyx: Sequence[float], positive: Optional[bool] = None) -> None:
        """Add a click at image voxel index (z, y, x) (data coordinates of the image layer) for the current
        class; ``positive`` None: the widget's polarity. Goes through the points layer like a mouse click."""
        if not self._ready_for_clicks():
            self._set_status("Load a model and use an image first." if self.backend is None or
                             not self._image_ready else "This model is prompt-free: use Automatic.", error=True)
            return
        positive = self.positive if positive is None else bool(positive)
        self.points_layer.feature_defaults = {"positive": positive}
        self.points_layer.add(np.asarray(point_zyx, dtype=float).reshape(1, 3))

    def _on_points_data(self, event) -> None:
        if self._syncing or self.points_layer is None:
            return
        from napari.layers.base import ActionType
        action = getattr(event, "action", None)
        if action == ActionType.ADDED:
            n = len(self.points_layer.data)
            for i in sorted({int(i) % n for i in event.data_indices}):
                self._submit_click(i)
        elif action in (ActionType.REMOVED, ActionType.CHANGED):
            self._edited_by_hand("Clicks")

    def _edited_by_hand(self, what: str) -> None:
        """Prompts moved or deleted on their layer: the session's come back (only Undo / Reset remove them)."""
        self._set_status(f"{what} are kept by the model session: use Undo or Reset class to remove them.")
        self._request_snapshot()

    def _submit_click(self, index: int) -> None:
        layer = self.points_layer
        point = np.asarray(layer.data[index], dtype=float)
        positive = bool(layer.features["positive"].iloc[index]) if "positive" in layer.features else self.positive
        self._recolor()
        if not self._ready_for_clicks():
            self._drop_point(index)
            self._set_status("Load a model and use an image first.", error=True)
            return
        voxel = np.rint(point).astype(int)
        shape = np.asarray(self.image_layer.data.shape)
        if np.any(voxel < 0) or np.any(voxel >= shape):
            self._drop_point(index)
            self._set_status(f"Click at voxel (z, y, x) {tuple(voxel.tolist())} is outside the image "
                             f"{tuple(shape.tolist())}: ignored.", error=True)
            return
        c = self.current_class
        word = "positive" if positive else "negative"
        self.queue.submit(f"Class {c}: {word} click at (z, y, x) {tuple(voxel.tolist())}", self.backend.add_click,
                          tuple(voxel.tolist()), positive, c, on_result=self._apply_snapshot,
                          on_error=lambda e: self._request_snapshot(), kind="click")

    def _drop_point(self, index: int) -> None:
        """Remove a point the model did not take (no image yet, outside the image)."""
        layer = self.points_layer
        was = self._syncing
        self._syncing = True
        try:
            layer.selected_data = {index}
            layer.remove_selected()
        finally:
            self._syncing = was

    def _recolor(self) -> None:
        layer = self.points_layer
        if layer is None or len(layer.data) == 0:
            return
        positive = layer.features["positive"].to_numpy(dtype=bool) if "positive" in layer.features else \
            np.ones(len(layer.data), bool)
        was = self._syncing
        self._syncing = True
        try:
            layer.face_color = np.where(positive[:, None], POSITIVE_COLOR[None], NEGATIVE_COLOR[None])
        finally:
            self._syncing = was

    # ================================================================== boxes, lassos, scribbles, mask
    def start_drawing(self, mode: str, what: str = "shape") -> None:
        """Select the shapes layer in a drawing mode (``add_rectangle``, ``add_polygon_lasso``, ``add_path``, ...)."""
        if not self._ready_for_clicks() or self.shapes_layer is None:
            self._set_status("Load a model and use an image first." if self.backend is None or
                             not self._image_ready else "This model is prompt-free: use Automatic.", error=True)
            return
        if self.viewer.dims.ndisplay != 2:
            self._set_status("Boxes, lassos and scribbles are drawn in the 2D view (toggle 2D/3D in the viewer's "
                             "buttons).", error=True)
            return
        self.viewer.layers.selection.active = self.shapes_layer
        self.shapes_layer.mode = mode
        self.shapes_layer.current_edge_color = POSITIVE_COLOR if self.positive else NEGATIVE_COLOR
        word = "positive" if self.positive else "negative"
        self._set_status(f"Draw a {word} {what} on the current slice (the Positive / Negative switch sets the "
                         f"polarity).")

    def _on_shapes_data(self, event) -> None:
        if self._syncing or self.shapes_layer is None:
            return
        from napari.layers.base import ActionType
        action = getattr(event, "action", None)
        n = len(self.shapes_layer.data)
        if action == ActionType.ADDED:
            if n <= self._shapes_taken:  # a drawing napari dropped (too few vertices)
                return
            new = list(range(self._shapes_taken, n))
            self._shapes_taken = n
            for i in new:
                self._submit_shape(i)
        elif action in (ActionType.REMOVED, ActionType.CHANGED):
            self._edited_by_hand("Drawn prompts")

    def _submit_shape(self, index: int) -> None:
        layer = self.shapes_layer
        shape_type = str(layer.shape_type[index])
        vertices = np.asarray(layer.data[index], dtype=float)[:, -3:]
        positive = self.positive
        self._color_shape(index, positive)
        kind = SHAPE_PROMPTS.get(shape_type)
        if kind is None or not self._ready_for_clicks():
            self._set_status("Load a model and use an image first." if not self._ready_for_clicks() else
                             f"A {shape_type} is not a prompt: draw a rectangle (box), a polygon (lasso) or a path "
                             f"(scribble).", error=True)
            self._request_snapshot()
            return
        flat = np.ptp(vertices, axis=0) <= 1e-3
        vertices[:, flat] = np.round(vertices[:, flat].mean(0))  # drawn on a slice: exactly on that voxel slice
        c = self.current_class
        word = "positive" if positive else "negative"
        if kind == "box":
            lo, hi = vertices.min(0), vertices.max(0)
            args, fn = (tuple(lo.tolist()), tuple(hi.tolist())), self.backend.add_box
            where = f"(z, y, x) {_rounded(lo)} to {_rounded(hi)}"
        else:
            args = ([tuple(v) for v in vertices.tolist()],)
            fn = self.backend.add_lasso if kind == "lasso" else self.backend.add_scribble
            where = f"of {len(vertices)} points from (z, y, x) {_rounded(vertices[0])}"
        self.queue.submit(f"Class {c}: {word} {kind} {where}", fn, *args, positive, c,
                          on_result=self._apply_snapshot, on_error=lambda e: self._request_snapshot(), kind="shape")

    def _color_shape(self, index: int, positive: bool) -> None:
        was = self._syncing
        self._syncing = True
        try:
            colors = np.asarray(self.shapes_layer.edge_color, dtype=float).copy()
            colors[index] = POSITIVE_COLOR if positive else NEGATIVE_COLOR
            self.shapes_layer.edge_color = colors
        finally:
            self._syncing = was

    def use_mask_as_prompt(self) -> None:
        """Give the mask layer's voxels of the current class (as edited by hand) to the model as the previous
        mask (``set_mask``; it replaces the class's earlier mask prompt, keeps its other prompts)."""
        if not self._require() or self.labels_layer is None:
            return
        if not self._ready_for_clicks():
            self._set_status("This model is prompt-free: use Automatic.", error=True)
            return
        c = self.current_class
        mask = np.asarray(self.labels_layer.data) == c
        self.queue.submit(f"Class {c}: edited mask ({int(mask.sum())} voxels) as prompt", self.backend.set_mask,
                          mask, c, on_result=self._apply_snapshot, on_error=lambda e: self._request_snapshot(),
                          kind="mask")

    def _show_shapes(self, shapes) -> None:
        layer = self.shapes_layer
        if layer is None:
            return
        self._syncing = True
        try:
            if len(layer.data):
                layer.selected_data = set(range(len(layer.data)))
                layer.remove_selected()
            if shapes:
                layer.add([np.asarray(v, float) for _, v, _ in shapes], shape_type=[t for t, _, _ in shapes],
                          edge_color=[POSITIVE_COLOR if p else NEGATIVE_COLOR for _, _, p in shapes],
                          face_color=[0, 0, 0, 0])
            layer.selected_data = set()
            self._shapes_taken = len(layer.data)
        finally:
            self._syncing = False

    # ================================================================== operations
    def _require(self) -> bool:
        if self.backend is None or not self._image_ready:
            self._set_status("Load a model and use an image first.", error=True)
            return False
        return True

    def _on_class_changed(self, *_) -> None:
        c = self.current_class
        if c is None or self.backend is None:
            return
        if self.labels_layer is not None:
            self.labels_layer.selected_label = c
        self.queue.submit(f"Class {c}", self.backend.set_class, c, on_result=self._apply_snapshot)

    def set_class(self, class_id: int) -> None:
        index = self.class_combo.findData(int(class_id))
        if index < 0:
            self._set_status(f"Class {class_id} is not a class of this model.", error=True)
            return
        self.class_combo.setCurrentIndex(index)

    def auto(self) -> None:
        """Predict the current class over the whole volume without clicks."""
        if not self._require():
            return
        c = self.current_class
        self.queue.submit(f"Class {c}: automatic prediction of the whole volume", self.backend.auto, c,
                          on_result=self._apply_snapshot, kind="auto")

    def undo(self) -> None:
        if not self._require():
            return
        self.queue.submit("Undo", self.backend.undo, on_result=self._apply_snapshot, kind="undo")

    def reset(self) -> None:
        """Clear the clicks and mask of the current class (undoable)."""
        if not self._require():
            return
        c = self.current_class
        self.queue.submit(f"Class {c}: reset", self.backend.reset, c, on_result=self._apply_snapshot, kind="reset")

    def save_mask(self, path: Optional[str] = None) -> None:
        """Write the label map with the input's exact geometry (worker); no path: a file dialog."""
        if not self._require():
            return
        if path is None:
            start = ""
            source = self.image_layer.metadata.get(META_SOURCE) if self.image_layer is not None else None
            if source:
                name = os.path.basename(source)
                for e in VOLUME_ENDINGS:
                    if name.lower().endswith(e):
                        name = name[: -len(e)]
                        break
                start = os.path.join(os.path.dirname(source), f"{name}_sam3d.nii.gz")
            path, _ = QFileDialog.getSaveFileName(self, "Save the mask", start,
                                                  "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha)")
            if not path:
                return
        self.queue.submit(f"Saving {os.path.basename(path)}", self.backend.save_mask, path,
                          on_result=lambda p: self._set_status(f"Saved the mask to {p} (the input's geometry)."))

    def _request_snapshot(self) -> None:
        """Re-read the session's clicks and mask (after an error or a manual edit of the points)."""
        if self.backend is None or not self._image_ready:
            self._show_clicks([])
            return
        self.queue.submit("Refreshing", self.backend.snapshot, on_result=self._apply_snapshot, kind="refresh")

    def _apply_snapshot(self, snapshot: Snapshot) -> None:
        self._last_snapshot = snapshot
        if snapshot.label_map is not None and self.labels_layer is not None:
            if self.labels_layer.data.shape == snapshot.label_map.shape:
                self.labels_layer.data = snapshot.label_map
            self.labels_layer.selected_label = snapshot.class_id
        pending = {op.kind for op in self.queue.pending_operations()}
        if "click" not in pending:
            self._show_clicks(snapshot.clicks)  # later clicks still queued: keep them on screen
        if "shape" not in pending:
            self._show_shapes(snapshot.shapes)
        self.undo_button.setEnabled(snapshot.can_undo)

    def _show_clicks(self, clicks) -> None:
        layer = self.points_layer
        if layer is None:
            return
        import pandas as pd
        points = np.array([p for p, _ in clicks], dtype=float).reshape(-1, 3)
        positive = np.array([b for _, b in clicks], dtype=bool)
        self._syncing = True
        try:
            layer.data = points
            layer.features = pd.DataFrame({"positive": positive})
            if len(points):
                layer.face_color = np.where(positive[:, None], POSITIVE_COLOR[None], NEGATIVE_COLOR[None])
            layer.selected_data = set()
        finally:
            self._syncing = False

    # ================================================================== status
    @property
    def busy(self) -> bool:
        """True while model work is running or queued."""
        return self.queue.busy

    def _on_started(self, op) -> None:
        self.progress.setVisible(True)
        if op.kind == "refresh":
            return
        queued = self.queue.pending - 1
        self._set_status(f"Working: {op.description}..." + (f" ({queued} more queued)" if queued > 0 else ""))

    def _on_finished(self, op, seconds: float) -> None:
        s = self._last_snapshot
        if op.error is not None or op.kind not in ("click", "shape", "mask", "auto", "undo", "reset") or s is None \
                or s.label_map is None:
            return
        n = int(np.count_nonzero(s.label_map == s.class_id))
        pos = sum(1 for _, b in s.clicks if b)
        volume = f" ({n * self._voxel_ml:.1f} ml)" if self._voxel_ml else ""
        drawn = f", {len(s.shapes)} drawn prompt{'s' if len(s.shapes) > 1 else ''}" if s.shapes else ""
        drawn += ", a mask prompt" if s.has_mask_prompt else ""
        self._set_status(f"{op.description}: done in {seconds:.1f} s. Class {s.class_id}: {pos} positive, "
                         f"{len(s.clicks) - pos} negative clicks{drawn}; mask {n} voxels{volume}." + self._model_note())

    def _on_failed(self, description: str, error: BaseException) -> None:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        self._set_status(f"{description} failed: {lines[0]}", error=True)  # one line, never a traceback

    def _on_idle(self) -> None:
        self.progress.setVisible(False)
        self._update_enabled()

    def _model_note(self) -> str:
        return f" [{self.backend.description}]" if self.backend is not None and "DEMO" in \
            self.backend.description else ""

    def _set_status(self, text: str, error: bool = False) -> None:
        self.status_label.setText(text)
        self.status_label.setStyleSheet("color: rgb(255, 90, 90);" if error else "")
        self.last_status = text

    def _update_enabled(self) -> None:
        ready = self.backend is not None and self._image_ready
        self.use_image_button.setEnabled(self.backend is not None and self.image_combo.count() > 0)
        for b in (self.auto_button, self.reset_button, self.save_button, self.mask_prompt_button,
                  *self.draw_buttons.values()):
            b.setEnabled(ready)
        self.undo_button.setEnabled(ready and (self._last_snapshot is None or self._last_snapshot.can_undo))
        self.class_combo.setEnabled(self.backend is not None)

    # helper for scripts and tests
    def wait_until_idle(self, timeout: float = 60.0) -> bool:
        """Process Qt events until the queue is empty (for scripts; tests use ``qtbot.waitUntil``)."""
        from qtpy.QtWidgets import QApplication
        end = time.monotonic() + timeout
        while self.queue.busy and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.01)
        QApplication.processEvents()
        return not self.queue.busy


__all__ = ["SAM3DWidget"]
