"""Box, scribble, lasso and mask prompts: validation (one-line errors naming the prompt) and their reduction to
sampler points, polarity, prompt types and the dense prompt."""
from __future__ import annotations

import numpy as np
import pytest

from sam3d_nnunet.prompts.shapes import (BoxPrompt, ClickPrompt, LassoPrompt, MaskPrompt, PromptError,
                                         ScribblePrompt, encode_prompts, validate_prompt)

SHAPE = (10, 20, 30)


def test_each_prompt_reduces_to_points_types_polarity_and_dense_regions():
    prompts = [ClickPrompt((1, 2, 3)), BoxPrompt((2, 4, 6), (6, 10, 12), positive=False),
               BoxPrompt((5, 2, 2), (5, 8, 9)),  # 2D box on slice z = 5
               ScribblePrompt([(1, 1, 1), (1, 1, 20)]), LassoPrompt([(3, 2, 2), (3, 2, 12), (3, 12, 7)]),
               MaskPrompt(np.full(SHAPE, 0.5))]
    enc = encode_prompts(prompts, SHAPE)
    counts = {t: int((enc.types == t).sum()) for t in range(4)}
    assert counts[0] == 1 and counts[1] == 27 + 9 and counts[2] == 16 and 3 <= counts[3] <= 16
    assert enc.labels[enc.types == 1][:27].sum() == 0 and enc.labels[enc.types != 1].all()
    box2d = enc.points[enc.types == 1][27:]
    assert np.all(box2d[:, 0] == 5) and box2d[:, 1].min() > 2 and box2d[:, 2].max() < 9
    scribble = enc.points[enc.types == 2]
    assert np.allclose(scribble[[0, -1]], [(1, 1, 1), (1, 1, 20)]) and np.all(scribble[:, :2] == 1)
    lasso = enc.points[enc.types == 3]
    assert np.all(lasso[:, 0] == 3)
    assert enc.dense.shape == (3, *SHAPE) and np.all(enc.dense[0] == 0.5)
    assert enc.dense[2, 2:7, 4:11, 6:13].all() and enc.dense[2].sum() == 5 * 7 * 7
    assert enc.dense[1, 5, 2:9, 2:10].all() and enc.dense[1, 3, 5, 7] == 1 and enc.dense[1, 3, 15, 7] == 0


def test_clicks_and_scribbles_alone_have_no_dense_prompt():
    enc = encode_prompts([ClickPrompt((1, 2, 3), positive=False), ScribblePrompt([(1, 1, 1), (2, 2, 2)])], SHAPE)
    assert enc.dense is None and enc.labels[0] == 0
    assert encode_prompts([], SHAPE).points.shape == (0, 3)


@pytest.mark.parametrize("prompt, message", [
    (BoxPrompt((0, 0, 0), (4, 4, 40)), "box: point .* falls outside the image"),
    (BoxPrompt((-3, 0, 0), (-3, 5, 5)), "box: point .* falls outside"),
    (BoxPrompt((2, 3, 4), (2, 3, 9)), "box: .*zero extent"),
    (BoxPrompt((2, 3, 4), (2, 3, 4)), "box: .*zero extent"),
    (ScribblePrompt([(1, 2, 3)]), "scribble: needs at least two distinct points"),
    (ScribblePrompt([(1, 2, 3), (1, 2, 3)]), "scribble: needs at least two distinct points"),
    (LassoPrompt([(1, 0, 0), (1, 0, 5), (1, 5, 5), (1, 5, 0)][:2]), "lasso: needs at least 3 distinct"),
    (LassoPrompt([(1, 0, 0), (1, 0, 5), (1, 0, 9)]), "lasso: degenerate"),
    (LassoPrompt([(1, 0, 0), (1, 5, 5), (1, 0, 5), (1, 5, 0)]), "lasso: the contour intersects itself"),
    (LassoPrompt([(1, 0, 0), (2, 0, 5), (3, 5, 5)]), "lasso: .*one slice"),
    (MaskPrompt(np.zeros((10, 20, 31))), "mask: shape"),
])
def test_bad_prompts_fail_in_one_line_naming_the_prompt(prompt, message):
    with pytest.raises(PromptError, match=message) as error:
        validate_prompt(prompt, SHAPE)
    assert "\n" not in str(error.value)


def test_bad_values_fail_at_construction():
    with pytest.raises(PromptError, match="mask: values"):
        MaskPrompt(np.full(SHAPE, 2.0))
    with pytest.raises(PromptError, match="box corner"):
        BoxPrompt((0, 0), (1, 1, 1))
    with pytest.raises(PromptError, match="scribble: positive"):
        ScribblePrompt([(0, 0, 0), (1, 1, 1)], positive="yes")
