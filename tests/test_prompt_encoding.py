"""The network reads boxes, scribbles, lassos and masks through the visual sampler's zero-initialised extensions:
exact on imported/old weights, effective once trained, and without another encoder pass."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sam3d_nnunet.model import ARCHITECTURE_VERSION, SAM3DNet
from sam3d_nnunet.prompts.shapes import BoxPrompt, ClickPrompt, LassoPrompt, MaskPrompt, ScribblePrompt, encode_prompts

PATCH = (16, 24, 32)


def tiny_model() -> SAM3DNet:
    torch.manual_seed(0)
    return SAM3DNet(1, 3, patch_size=PATCH, variant="tiny", token_stride=4, window_size=2).eval()


class CountingNet(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.encodes = net, 0

    def encode(self, image):
        self.encodes += 1
        return self.net.encode(image)


def _batch(prompts):
    enc = encode_prompts(prompts, PATCH)
    pts = torch.from_numpy(enc.points).float()[None]
    dense = None if enc.dense is None else torch.from_numpy(enc.dense)[None]
    return pts, torch.from_numpy(enc.labels)[None], torch.from_numpy(enc.types)[None], dense


PROMPTS = [ClickPrompt((8, 12, 16)), BoxPrompt((4, 6, 8), (12, 18, 24)), ScribblePrompt([(8, 3, 3), (8, 20, 28)]),
           LassoPrompt([(5, 2, 2), (5, 2, 20), (5, 20, 10)], positive=False), MaskPrompt(np.full(PATCH, 0.25))]


def test_zero_initialised_extensions_give_exactly_the_clicks_only_output_without_reencoding():
    net = tiny_model()
    counting = CountingNet(net)
    image = torch.randn(1, 1, *PATCH)
    with torch.no_grad():
        features = counting.encode(image)
        pts, labels, types, dense = _batch(PROMPTS)
        plain = net.decode(features, pts, labels, 1)
        full = net.decode(features, pts, labels, 1, point_types=types, dense_prompt=dense)
        torch.testing.assert_close(full, plain, rtol=0, atol=0)
        # trained extensions change the output, still without another encoder pass
        for name in ("point_type_embed.weight", "dense_encoder.weight", "dense_encoder.bias"):
            net.prompt_encoder.get_parameter(name).normal_(0, 0.5)
        with_types = net.decode(features, pts, labels, 1, point_types=types)
        with_dense = net.decode(features, pts, labels, 1, point_types=types, dense_prompt=dense)
        mask_only = net.decode(features, None, None, 1, dense_prompt=dense)
    assert counting.encodes == 1
    assert not torch.equal(with_types, plain) and not torch.equal(with_dense, with_types)
    assert mask_only.shape == plain.shape


def test_dense_prompt_gets_gradients_and_bad_shapes_are_refused():
    net = tiny_model().train()
    pts, labels, types, dense = _batch(PROMPTS)
    out = net(torch.randn(1, 1, *PATCH), pts, labels, 1)  # forward stays the clicks-only path
    features = net.encode(torch.randn(1, 1, *PATCH))
    net.decode(features, pts, labels, 1, types, dense).sum().backward()
    assert net.prompt_encoder.dense_encoder.weight.grad.abs().sum() > 0
    assert net.prompt_encoder.point_type_embed.weight.grad.abs().sum() > 0
    assert out.shape == (1, 2, *PATCH)
    with pytest.raises(ValueError, match="dense_prompt must be"):
        net.decode(features, pts, labels, 1, dense_prompt=dense[:, :, :8])


def test_version_2_weights_load_exactly_and_others_are_refused():
    from sam3d_nnunet.model import IncompatibleCheckpointError

    assert ARCHITECTURE_VERSION == 3
    net = tiny_model()
    v2 = {k: v for k, v in net.state_dict().items()
          if "point_type_embed" not in k and "dense_encoder" not in k}
    v2["architecture_version"] = torch.tensor(2)
    other = tiny_model()
    torch.nn.init.ones_(other.prompt_encoder.point_type_embed.weight)
    other.load_state_dict(v2)
    assert int(other.architecture_version) == 3 and not other.prompt_encoder.point_type_embed.weight.any()
    with pytest.raises(IncompatibleCheckpointError, match="version 1,"):
        other.load_state_dict({**v2, "architecture_version": torch.tensor(1)})
