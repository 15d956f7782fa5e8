"""napari plug-in: click-by-click SAM3D segmentation in the napari viewer (optional extra ``napari``).

Install with ``pip install -e ".[napari]"`` and start ``napari``; the dock widget is under
*Plugins > SAM3D interactive segmentation*. The plug-in is declared by the npe2 manifest ``napari.yaml`` of this
package (entry point ``napari.manifest``), which contributes:

* the dock widget ``SAM3DWidget`` (``widget.py``): choose a trained model (nnU-Net results folder, dataset,
  trainer, plans, configuration, folds) and an image, click positive / negative points, draw positive /
  negative boxes, lassos and scribbles, send a hand-edited mask as the previous-mask prompt, undo, reset, choose
  the class, run the automatic (no-click) mode and save the mask in the input's exact geometry;
* a reader for NIfTI / NRRD / MHA volumes (``io.py``) that reads them as ``sam3d-nnunet predict`` does
  (SimpleITK, array order (z, y, x), layer ``scale`` = spacing in array order, the direction and origin as the
  layer's affine) so that a voxel in the viewer is the voxel the command line uses.

The model side is ``sam3d_nnunet.inference.InteractiveSession``, reached only through ``SessionAdapter``
(``session_adapter.py``). Model work runs in a worker thread (``worker.py``) so the window never freezes.

Nothing here is imported by ``import sam3d_nnunet`` or by the ``sam3d-nnunet`` command: the core install needs
neither napari nor Qt. Importing this package itself imports neither; only ``widget`` and ``worker`` do.
"""

__all__ = ["SAM3DWidget"]


def __getattr__(name):  # lazy: ``from sam3d_nnunet.napari_plugin import SAM3DWidget`` imports Qt only then
    if name == "SAM3DWidget":
        from sam3d_nnunet.napari_plugin.widget import SAM3DWidget
        return SAM3DWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
