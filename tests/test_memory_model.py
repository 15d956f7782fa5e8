"""The training-memory model the planner uses, against peaks measured on a GPU.

The figures are ``torch.cuda.max_memory_allocated`` of training steps (bf16 autocast, AdamW on the trainable
tensors) measured on an NVIDIA H200 with ``python benchmarks/run_benchmarks.py --gpu --cases gpu_memory_grid``
(BENCHMARKS.md, "Training memory"), with the linear-head decoder of that time (``decoder="linear"``). The paper
decoder's extra term was measured on a CPU (saved-for-backward bytes), not on a GPU: the last test holds it to
that measurement.

What these tests can and cannot catch:

* ``test_estimate_is_close_to_the_measured_peak`` compares the estimate with the very points its coefficients
  were fitted to: it catches a changed coefficient or formula, and a change of the parameter counts (which the
  estimate takes from the current network), not whether the formula predicts a configuration it was not fitted on.
* ``test_leave_one_out_...`` refits the same formula by least squares (the fit is not in the repository; it is
  reimplemented here) without one measured point and predicts that point: it checks that the formula's form
  generalises across patch sizes, batch sizes and fine-tuning policies. Only the 6 vit_b points without
  checkpointing can be held out: without the single vit_l point the width no longer varies and the fit cannot
  separate its two activation terms; the 3 checkpointing points determine their 3 coefficients exactly, and the
  ``full`` factor comes from one point, so those have no spare measurement to test against.
* Nothing here can catch a change to the network that alters its GPU memory (another attention kernel, more
  saved activations) without a new GPU measurement: the measured figures are fixed numbers from one past run,
  and no GPU was available to remeasure them. The tiny variant and the MLA decoder term are only bounded or
  held to a CPU measurement.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from sam3d_nnunet.model import estimate_training_memory_gb

# (variant, patch, token stride, batch, checkpointing, fine-tuning policy, measured peak GB)
MEASURED_H200 = [
    ("vit_b", (128, 128, 128), 4, 1, False, "adapter", 12.81),
    ("vit_b", (128, 128, 128), 4, 1, True, "adapter", 4.34),
    ("vit_b", (128, 128, 128), 4, 2, False, "adapter", 24.52),
    ("vit_b", (128, 128, 128), 4, 2, True, "adapter", 7.78),
    ("vit_b", (96, 96, 96), 4, 1, False, "adapter", 5.99),
    ("vit_b", (64, 64, 64), 4, 2, False, "adapter", 3.92),
    ("vit_b", (32, 128, 128), (1, 4, 4), 1, False, "adapter", 12.78),
    ("vit_b", (128, 128, 128), 4, 1, False, "full", 18.97),
    ("vit_b", (128, 128, 128), 4, 1, False, "lora", 12.71),
    ("vit_l", (128, 128, 128), 4, 1, False, "adapter", 31.37),
    ("vit_l", (128, 128, 128), 4, 1, True, "adapter", 8.04),
]


@pytest.mark.parametrize("variant,patch,stride,batch,checkpointing,finetune,measured", MEASURED_H200)
def test_estimate_is_close_to_the_measured_peak(variant, patch, stride, batch, checkpointing, finetune, measured):
    estimate = estimate_training_memory_gb(variant, patch, stride, batch, finetune=finetune,
                                           gradient_checkpointing=checkpointing, decoder="linear")
    assert estimate == pytest.approx(measured, rel=0.03)


def test_tiny_variant_is_not_underestimated():
    for checkpointing, measured in ((False, 0.237), (True, 0.160)):
        assert measured <= estimate_training_memory_gb("tiny", (64, 64, 64), 4, 2, gradient_checkpointing=checkpointing,
                                                       decoder="linear") <= 3 * measured


def test_checkpointing_trades_memory_per_sample():
    without = [estimate_training_memory_gb("vit_b", (128,) * 3, 4, b) for b in (1, 2)]
    with_ = [estimate_training_memory_gb("vit_b", (128,) * 3, 4, b, gradient_checkpointing=True) for b in (1, 2)]
    assert with_[1] - with_[0] < (without[1] - without[0]) / 2.5
    # the paper configuration fits the 12 GB reference budget only with checkpointing
    assert with_[0] <= 12.0 < without[0]


def test_paper_decoder_adds_its_measured_saved_activations():
    """CPU measurement (bf16 autocast, bytes autograd saves): MLA 0.619 GB vs linear 0.212 GB at vit_b 128^3, batch 1;
    the estimate's difference also holds the MLA decoder's 1.8 M extra parameters (16 B each)."""
    linear = estimate_training_memory_gb("vit_b", (128,) * 3, 4, 1, decoder="linear")
    mla = estimate_training_memory_gb("vit_b", (128,) * 3, 4, 1)
    extra_parameters = (7_088_256 - 5_312_516) * 16 / 1e9
    assert mla - linear - extra_parameters == pytest.approx(0.619 - 0.212, rel=0.05)


def _activation_fit_rows():
    """Per measured point without checkpointing (adapter / LoRA): the formula's regressors for (workspace,
    bytes per token x block x width, bytes per token x block), the bytes they must explain (measured peak minus
    4 B x all + 12 B x trainable parameters of today's network), the measured GB and a name."""
    from sam3d_nnunet.model import memory
    from sam3d_nnunet.model.variants import get_variant
    rows = []
    for variant, patch, stride, batch, checkpointing, finetune, measured in MEASURED_H200:
        if checkpointing or finetune == "full":
            continue
        v = get_variant(variant)
        strides = [stride] * 3 if isinstance(stride, int) else list(stride)
        tokens = math.prod(p // s for p, s in zip(patch, strides))
        n_all, n_trainable = memory._parameter_counts(variant, finetune, None, None, "linear")
        fixed = 4.0 * n_all + 12.0 * n_trainable
        rows.append(([1.0, batch * v.depth * tokens * v.embed_dim, batch * v.depth * tokens],
                     measured * 1e9 - fixed, measured, fixed, f"{variant} {patch} batch {batch} {finetune}"))
    return rows


def _fit(x, y, measured):
    """Least squares on the relative error (each row divided by its measured peak)."""
    w = 1.0 / measured
    return np.linalg.lstsq(x * w[:, None], y * w, rcond=None)[0]


# Held-out errors measured when this test was written (refit without the point, then predicted):
# vit_b 128^3 b1 -0.2%, 128^3 b2 +0.6%, 96^3 -0.6%, 64^3 b2 +1.3%, 32x128x128 +0.1%, LoRA 128^3 -0.2%.
LEAVE_ONE_OUT_TOLERANCE = 0.02  # the accuracy the model's docstring states for vit_b


def test_leave_one_out_refit_predicts_the_held_out_peak():
    rows = _activation_fit_rows()
    x = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    measured = np.array([r[2] for r in rows])
    assert len(rows) == 7 and np.linalg.matrix_rank(x) == 3
    held_out = 0
    for i, (_, _, peak, fixed, name) in enumerate(rows):
        keep = np.arange(len(rows)) != i
        if np.linalg.matrix_rank(x[keep]) < x.shape[1]:
            assert name.startswith("vit_l"), f"{name}: only the single vit_l point should be indispensable"
            continue
        coefficients = _fit(x[keep], y[keep], measured[keep])
        assert (coefficients > 0).all(), (name, coefficients)
        predicted = (x[i] @ coefficients + fixed) / 1e9
        assert predicted == pytest.approx(peak, rel=LEAVE_ONE_OUT_TOLERANCE), \
            f"{name}: predicted {predicted:.2f} GB without this point, measured {peak} GB"
        held_out += 1
    assert held_out == 6
