#!/usr/bin/env python
"""Screenshot of the SAM3D napari plug-in in use on a real CT: ``docs/napari_screenshot.png``.

The napari window with the plug-in's dock widget (docked through its npe2 manifest, as *Plugins > SAM3D
interactive segmentation* does), the CT read by the plug-in (the command line's reader, the file's spacing and
orientation), the clicks (green positive, red negative) and the mask the session returned, and, with ``--label``,
the reference label as a yellow contour.

Model: ``--model-folder`` (a trained nnU-Net model folder, ``--folds``, ``--checkpoint``) or, by default, the
plug-in's DEMO DOUBLE (``sam3d_nnunet.napari_plugin.demo.IntensityOracleNet``: the voxels within +-``--tolerance``
HU of the clicked intensity, connected to a positive click and nearer to it than to any negative click). It is
not a trained model and the widget's status line says so; the real session (nnU-Net preprocessing, prompted
windows, export to the raw geometry) runs around it, so image, clicks and mask are placed exactly as with a
trained model.

Clicks: ``--click z y x`` (positive, raw array-order voxel index; default: the deepest voxel of ``--label``), then
``--negative z y x`` (any number), then ``--corrections N`` (default 1) correction clicks simulated from
``--label`` on the displayed slice, as an annotator looking at that slice would make them: a negative click at
the centre of the largest false-positive region there, else a positive one at the centre of the largest missed
part.

Drawn prompts instead of the first click: ``--prompt box`` draws a positive rectangle on the displayed slice
around the reference label there (margin ``--box-margin`` voxels), ``--prompt scribble`` a positive path through
it (along its longest axis), both on the plug-in's shapes layer as a mouse would; the output is then
``docs/napari_box.png`` / ``docs/napari_scribble.png`` and no correction click follows unless
``--corrections`` says so. They need the reference label (``--label``, the default case's)::

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/napari_screenshot.py --prompt box

Requirements: ``pip install -e ".[napari]"`` and an OpenGL-capable Qt platform. Qt's ``offscreen`` platform has
no OpenGL context (napari's canvas cannot draw there), so on a machine without a screen use Xvfb (Debian:
``apt-get install -y xvfb xauth libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
libxcb-xkb1 libxkbcommon-x11-0 libxcb-randr0 libxcb-shape0 libxcb-xfixes0``, the libraries Qt's xcb platform
plug-in loads; Mesa's software OpenGL is enough)::

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/napari_screenshot.py

The default case is the soft-tissue sarcoma ``../shared/data/STS_CT/imagesTr/sts_002_0000.nii.gz`` with its
label (CC BY 3.0, TCIA Soft-tissue-Sarcoma, Vallieres et al. 2015, cropped by the IBSI).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SAM3D_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_CASE = "sts_002"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=str(SHARED / "STS_CT" / "imagesTr" / f"{DEFAULT_CASE}_0000.nii.gz"))
    p.add_argument("--label", default=None, help="reference label shown as a contour (default: the STS case's)")
    p.add_argument("--no-label", action="store_true", help="show no reference label")
    p.add_argument("--model-folder", default=None, help="trained model folder (default: the DEMO DOUBLE)")
    p.add_argument("--folds", default="0")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--device", default="cpu")
    p.add_argument("--click", type=float, nargs=3, metavar=("Z", "Y", "X"), default=None)
    p.add_argument("--negative", type=float, nargs=3, metavar=("Z", "Y", "X"), action="append", default=[])
    p.add_argument("--corrections", type=int, default=None, help="default: 1 after a click, 0 after a drawing")
    p.add_argument("--prompt", choices=("click", "box", "scribble"), default="click",
                   help="the first prompt: a click, or a box / scribble drawn around / through the reference label")
    p.add_argument("--box-margin", type=int, default=4)
    p.add_argument("--tolerance", type=float, default=35.0, help="demo double: HU band around the clicked value")
    p.add_argument("--output", default=None, help="default: docs/napari_screenshot.png, napari_box.png or "
                                                   "napari_scribble.png by --prompt")
    p.add_argument("--size", type=int, nargs=2, default=(1680, 1000), metavar=("W", "H"))
    args = p.parse_args(argv)
    if args.label is None and not args.no_label and Path(args.image).name == f"{DEFAULT_CASE}_0000.nii.gz":
        args.label = str(SHARED / "STS_CT" / "labelsTr" / f"{DEFAULT_CASE}.nii.gz")
    if args.no_label:
        args.label = None
    if args.output is None:
        name = "napari_screenshot.png" if args.prompt == "click" else f"napari_{args.prompt}.png"
        args.output = str(REPO / "docs" / name)
    if args.corrections is None:
        args.corrections = 1 if args.prompt == "click" else 0
    if args.prompt != "click" and args.label is None:
        p.error(f"--prompt {args.prompt} is drawn from the reference label: give --label")
    return args


def _wait(widget, what: str, timeout: float = 600.0) -> None:
    t = time.perf_counter()
    if not widget.wait_until_idle(timeout):
        raise SystemExit(f"timed out after {timeout:.0f} s: {what}")
    if "failed" in widget.last_status:
        raise SystemExit(f"{what}: {widget.last_status}")
    print(f"  {what}: {time.perf_counter() - t:.1f} s | {widget.last_status}", flush=True)


def _correction(mask: np.ndarray, label: np.ndarray, z: int, spacing_yx, min_pixels: int = 20):
    """A correction click on slice z: (point (z, y, x), positive) at the centre of the largest false-positive
    region (negative click), else of the largest missed region (positive click); None if both are tiny."""
    from scipy import ndimage
    for err, positive in ((mask[z] & ~label[z], False), (label[z] & ~mask[z], True)):
        comp, n = ndimage.label(err)
        if n == 0:
            continue
        sizes = ndimage.sum_labels(err, comp, range(1, n + 1))
        k = 1 + int(np.argmax(sizes))
        if sizes[k - 1] < min_pixels:
            continue
        d = ndimage.distance_transform_edt(comp == k, sampling=spacing_yx)
        y, x = np.unravel_index(int(np.argmax(d)), d.shape)
        return (z, int(y), int(x)), positive
    return None


def _drawing(label_slice: np.ndarray, kind: str, margin: int) -> np.ndarray:
    """Vertices (y, x) of a rectangle around the label on one slice (``margin`` voxels), or of a path through
    it along its longest axis (the label's voxels nearest to 5 evenly spaced points of that axis)."""
    yx = np.argwhere(label_slice).astype(float)
    if kind == "box":
        lo = np.maximum(yx.min(0) - margin, 0)
        hi = np.minimum(yx.max(0) + margin, np.asarray(label_slice.shape) - 1)
        return np.array([lo, [lo[0], hi[1]], hi, [hi[0], lo[1]]])
    centre = yx.mean(0)
    _, _, vt = np.linalg.svd(yx - centre, full_matrices=False)
    along = (yx - centre) @ vt[0]
    targets = centre + np.linspace(0.6 * along.min(), 0.6 * along.max(), 5)[:, None] * vt[0][None]
    return np.array([yx[np.argmin(((yx - t) ** 2).sum(1))] for t in targets])


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        print("QT_QPA_PLATFORM=offscreen has no OpenGL: napari's canvas cannot draw. Run under Xvfb:\n"
              '  QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/napari_screenshot.py',
              file=sys.stderr)
        return 2
    if not Path(args.image).is_file():
        print(f"image '{args.image}' does not exist (the shared data folder: {SHARED})", file=sys.stderr)
        return 2
    import napari
    import SimpleITK as sitk
    from napari.utils.colormaps import DirectLabelColormap

    from sam3d_nnunet.napari_plugin.demo import DEMO_DESCRIPTION, make_demo_session
    from sam3d_nnunet.napari_plugin.session_adapter import SessionAdapter, parse_folds

    viewer = napari.Viewer(title="sam3d_nnunet: interactive SAM3D segmentation")
    viewer.window.resize(*args.size)
    _, widget = viewer.window.add_plugin_dock_widget("sam3d_nnunet", "SAM3D interactive segmentation")
    print(f"plug-in docked: {type(widget).__name__}")

    widget.open_image(args.image)
    _wait(widget, "reading the image")
    image_layer = widget.image_layer or viewer.layers[-1]
    image_layer.contrast_limits = (-160, 240)  # soft-tissue window
    geometry = image_layer.metadata["sam3d_geometry"]
    shape = tuple(int(s) for s in image_layer.data.shape)

    label = None
    if args.label:
        label = sitk.GetArrayFromImage(sitk.ReadImage(args.label)) > 0
        if label.shape != shape:
            raise SystemExit(f"label {label.shape} does not match the image {shape}")
        reference = viewer.add_labels(label.astype(np.uint8), name="reference label (ground truth)",
                                      opacity=1.0, scale=image_layer.scale,
                                      affine=image_layer.affine.affine_matrix,
                                      colormap=DirectLabelColormap(color_dict={None: "transparent",
                                                                               0: "transparent", 1: "yellow"}))
        reference.contour = 1
        viewer.layers.move(viewer.layers.index(reference), 1)  # just above the image

    if args.model_folder:
        widget.load_model(args.model_folder, parse_folds(args.folds), args.checkpoint, args.device)
        _wait(widget, "loading the model and preprocessing the image")
    else:
        spacing_zyx = tuple(geometry.spacing[::-1])
        patch = tuple(int(np.ceil(s / 16) * 16) for s in shape)  # one window: the rules see every click
        session, _ = make_demo_session(spacing_zyx, patch, labels={"background": 0, "tumour": 1},
                                       tolerance=args.tolerance, sigma=1.0, opening_radius=1)
        widget.set_backend(SessionAdapter(session, DEMO_DESCRIPTION))
        _wait(widget, "preprocessing the image (demo double)")

    if args.click is not None:
        first = tuple(int(round(v)) for v in args.click)
    elif label is not None:
        from scipy import ndimage
        depth = ndimage.distance_transform_edt(label, sampling=geometry.spacing[::-1])
        first = tuple(int(v) for v in np.unravel_index(int(np.argmax(depth)), shape))
    else:
        first = tuple(s // 2 for s in shape)
    world = image_layer.data_to_world(np.asarray(first, dtype=float))
    viewer.dims.set_point(0, world[0])
    if args.prompt == "click":
        widget.add_click(first, positive=True)
        _wait(widget, f"positive click at (z, y, x) {first}")
    else:  # drawn on the shapes layer (the image's voxel coordinates) on the displayed slice, as a mouse would
        yx = _drawing(label[first[0]], args.prompt, args.box_margin)
        vertices = np.column_stack([np.full(len(yx), float(first[0])), yx])
        widget.shapes_layer.add(vertices, shape_type="rectangle" if args.prompt == "box" else "path")
        _wait(widget, f"positive {args.prompt} on slice z={first[0]}: {np.round(vertices).astype(int).tolist()}")
    for point in args.negative:
        widget.add_click(tuple(int(round(v)) for v in point), positive=False)
        _wait(widget, f"negative click at {point}")
    if label is not None:
        for _ in range(args.corrections):
            step = _correction(widget.labels_layer.data == 1, label, first[0], geometry.spacing[::-1][1:])
            if step is None:
                break
            point, positive = step
            widget.add_click(point, positive=positive)
            _wait(widget, f"{'positive' if positive else 'negative'} correction click at (z, y, x) {point}")
        mask = widget.labels_layer.data == 1
        dice = 2 * np.count_nonzero(mask & label) / max(1, mask.sum() + label.sum())
        print(f"Dice of the mask against the reference label: {dice:.3f}")

    viewer.layers.selection.active = image_layer
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QApplication

    def settle():
        for _ in range(20):
            QApplication.processEvents()
            time.sleep(0.05)

    notification_manager.records.clear()
    settle()
    viewer.reset_view()  # the whole slice, now that the dock has its final width
    settle()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(out), canvas_only=False, flash=False)
    from sam3d_nnunet.prompts.shapes import describe_prompt
    print(f"wrote {out} ({shape} voxels, prompts {[describe_prompt(p) for p in widget.backend.prompts(1)]})")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
