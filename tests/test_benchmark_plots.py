"""The benchmark's overlay PNGs: a readable grey-value window and a legend that names what each contour shows."""
from __future__ import annotations

import numpy as np
import pytest

LABELS = {"1": "organ", "2": "tumour"}
SAM = "nnUNetTrainerSAM3D__SAM3DPlans__3d_fullres"
BASE = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def _phantom():
    from sam3d_nnunet.phantoms import make_phantom_case
    image, label = make_phantom_case((48, 48, 48), (1.0, 1.0, 1.0), np.random.default_rng([0, 1]))
    assert (label == 2).any() and (image < -900).any(), "a CT with air around the body"
    return image.astype(np.float32), label


def _results(sam_dice: dict, base_dice: dict) -> dict:
    def metrics(dice):
        return {k: {"Dice": v} for k, v in dice.items()}
    return {"labels": LABELS, "baseline": BASE, "sam_methods": [SAM],
            "methods": {SAM: {"display": "SAM3D (nnUNetTrainerSAM3D)",
                              "per_case": {"c": {"protocols": {"clicks_1": {"metrics": metrics(sam_dice)}}}}},
                        BASE: {"display": "nnU-Net (nnUNetTrainer)",
                               "per_case": {"c": {"protocols": {"nnunet": {"metrics": metrics(base_dice)}}}}}}}


@pytest.fixture()
def rendered(monkeypatch, tmp_path):
    """plot_overlay on a phantom whose SAM3D prediction found the organ but not the tumour; returns
    (figure, image slice, label slice) as rendered, the PNG written to tmp_path."""
    from sam3d_nnunet.benchmark import plots
    figures = []
    real = plots.savefig_atomic

    def keep(fig, path, **kwargs):
        figures.append(fig)
        real(fig, path, **kwargs)

    monkeypatch.setattr(plots, "savefig_atomic", keep)
    image, gt = _phantom()
    pred_sam = np.where(gt == 1, 1, 0).astype(np.uint8)  # the organ only: the tumour was missed
    results = _results({"1": 0.9, "2": 0.0}, {"1": 0.95, "2": 0.8})

    def render(intensity_properties=None):
        figures.clear()
        plots.plot_overlay(results, "c", "worst", SAM, "clicks_1", "2", image, gt, pred_sam, gt.copy(),
                           (1.0, 1.0, 1.0), None, str(tmp_path / "overlay.png"), intensity_properties)
        assert (tmp_path / "overlay.png").read_bytes()[:4] == b"\x89PNG"
        z = int(round(np.argwhere(gt == 2).mean(0)[0]))
        return figures[0], image[z], gt[z]
    return render


def _grey(fig) -> np.ndarray:
    """The grey level (0 black .. 1 white) matplotlib gives each pixel of the full-slice panel."""
    im = fig.axes[0].get_images()[0]
    return np.clip(np.asarray(im.norm(im.get_array()), dtype=float), 0, 1)


@pytest.mark.parametrize("source", ["this image", "the dataset fingerprint"])
def test_overlay_grey_values_show_organ_and_tumour(rendered, source):
    props = None
    if source == "the dataset fingerprint":  # nnU-Net's foreground percentiles, as in the plans
        image, gt = _phantom()
        lo, hi = np.percentile(image[gt > 0], [0.5, 99.5])
        props = {"percentile_00_5": float(lo), "percentile_99_5": float(hi), "mean": 60.0}
    fig, image, gt = rendered(props)
    grey = _grey(fig)
    body = image > -500
    assert (grey >= 1.0).mean() < 0.5, "most pixels saturated at white"
    assert (grey[body] >= 0.9).mean() < 0.5, "the body is washed out near white"
    organ, tumour, tissue = grey[gt == 1].mean(), grey[gt == 2].mean(), grey[body & (gt == 0)].mean()
    assert organ - tissue > 0.2, f"organ {organ:.2f} not distinguishable from the tissue around it {tissue:.2f}"
    assert abs(tumour - organ) > 0.1, f"tumour {tumour:.2f} not distinguishable from the organ {organ:.2f}"
    assert grey[image < -900].max() == 0.0, "air is black"


def test_overlay_legend_names_the_class_of_each_contour_and_its_dice(rendered):
    fig, _, _ = rendered()
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "SAM3D clicks 1: organ (Dice 0.900)" in legend, legend
    assert "SAM3D clicks 1: tumour (Dice 0.000, none on this slice)" in legend, legend
    assert "nnU-Net: tumour (Dice 0.800)" in legend and "nnU-Net: organ (Dice 0.950)" in legend, legend
    assert "ground truth: tumour" in legend and "ground truth: organ" in legend, legend
    for text in legend:
        if "Dice" in text:
            assert any(f": {name} (" in text for name in LABELS.values()), f"no class named in {text!r}"
    # the ranked class (tumour) is drawn thick, the other class thin, in the legend as in the image
    widths = {t.get_text(): h.get_linewidth() for t, h in zip(fig.axes[1].get_legend().get_texts(),
                                                              fig.axes[1].get_legend().legend_handles)}
    assert widths["SAM3D clicks 1: tumour (Dice 0.000, none on this slice)"] > widths[
        "SAM3D clicks 1: organ (Dice 0.900)"]


def test_display_window_ignores_air():
    from sam3d_nnunet.benchmark.plots import display_window
    image, gt = _phantom()
    lo, hi = display_window(image, gt)
    assert -100 < lo < 60 < hi < 300, (lo, hi)
    assert display_window(image, gt, {"percentile_00_5": 0.0, "percentile_99_5": 100.0}) == (-25.0, 125.0)
    flat = np.zeros((4, 4, 4), np.float32)
    assert display_window(flat, np.zeros_like(flat, np.uint8)) == (0.0, 1.0)
