"""The SAM 3D adapter network: structure, parameter counts, equivalences and gradient flow."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam3d_nnunet.model import FINETUNE_POLICIES, SAM3DNet, parameter_summary, token_grid
from sam3d_nnunet.model.block import Block3D
from sam3d_nnunet.model.finetune import is_frozen
from sam3d_nnunet.model.patch_embed import PatchEmbed3D
from sam3d_nnunet.model.prompt_encoder import sample_features_at_clicks
from sam3d_nnunet.model.sam_checkpoint import expected_sam_keys

TINY = dict(variant="tiny", token_stride=4, window_size=2)


def tiny_model(patch=(16, 24, 32), num_classes=3, **kwargs) -> SAM3DNet:
    torch.manual_seed(0)
    return SAM3DNet(1, num_classes, patch_size=patch, **{**TINY, **kwargs})


def test_paper_configuration_matches_published_counts():
    with torch.device("meta"):
        model = SAM3DNet(1, 2, variant="vit_b", patch_size=(128, 128, 128), token_stride=4, window_size=8)
    counts = parameter_summary(model)
    assert counts["token_grid"] == [32, 32, 32]
    assert counts["encoder_trainable"] == pytest.approx(15.21e6, rel=0.03)
    assert counts["encoder_frozen"] == pytest.approx(88.85e6, rel=0.03)
    assert counts["total_trainable"] < 30e6
    assert counts["total"] == counts["total_trainable"] + counts["encoder_frozen"]


@pytest.mark.parametrize("token_stride", [2, 4, 8, (1, 4, 4), (2, 8, 4)])
def test_fused_patch_embedding_equals_the_papers_path(token_stride):
    torch.manual_seed(1)
    embed = PatchEmbed3D(embed_dim=5, token_stride=token_stride).double()
    with torch.no_grad():  # a depth kernel unlike the 1/16 initialisation, and non-zero biases
        embed.depth_conv.weight.normal_()
        embed.depth_conv.bias.normal_()
    sd, sh, sw = (token_stride,) * 3 if isinstance(token_stride, int) else token_stride
    crop = torch.randn(2, 3, 2 * sd, 3 * sh, 4 * sw, dtype=torch.float64)
    fused = embed(crop)
    reference = embed.forward_paper(crop).permute(0, 2, 3, 4, 1)
    assert fused.shape == reference.shape == (2, 2, 3, 4, 5)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-10)


def test_fused_patch_embedding_float32_rounding():
    torch.manual_seed(2)
    embed = PatchEmbed3D(embed_dim=16, token_stride=4)
    crop = torch.randn(1, 3, 16, 16, 16)
    torch.testing.assert_close(embed(crop), embed.forward_paper(crop).permute(0, 2, 3, 4, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("crop,stride", [((32, 48, 64), 4), ((24, 40, 16), 8), ((20, 12, 28), 4),
                                         ((12, 48, 32), (1, 4, 4))])
def test_click_sampling_reads_the_clicked_voxel(crop, stride):
    """A feature map whose channels hold the voxel coordinates of each token's centre: sampling at a
    click must return the click's own coordinates (a swapped axis would not)."""
    strides = (stride,) * 3 if isinstance(stride, int) else stride
    grid = [n // s for n, s in zip(crop, strides)]
    centres = [torch.arange(g, dtype=torch.float64) * s + (s - 1) / 2 for g, s in zip(grid, strides)]
    dd, hh, ww = torch.meshgrid(*centres, indexing="ij")
    feature_map = torch.stack([dd, hh, ww])[None].repeat(2, 1, 1, 1, 1)
    generator = torch.Generator().manual_seed(0)
    low = torch.tensor([(s - 1) / 2 for s in strides], dtype=torch.float64)
    high = torch.tensor([n - 1 - (s - 1) / 2 for n, s in zip(crop, strides)], dtype=torch.float64)
    clicks = low + (high - low) * torch.rand(2, 7, 3, generator=generator, dtype=torch.float64)
    clicks[0, 0] = torch.round(clicks[0, 0])  # an integer voxel too
    sampled = sample_features_at_clicks(feature_map, clicks, crop)
    torch.testing.assert_close(sampled, clicks, rtol=0, atol=1e-9)


def test_non_cubic_crops_and_clear_error_for_bad_grid():
    assert token_grid((64, 96, 32), 4, 8) == (16, 24, 8)
    with pytest.raises(ValueError, match="axis 1 \\(40\\) is not a multiple of token_stride x window_size"):
        token_grid((32, 40, 32), 4, 8)
    model = tiny_model(patch=(8, 16, 24))
    assert model(torch.randn(1, 1, 8, 16, 24), target_class=1).shape == (1, 2, 8, 16, 24)
    thick = tiny_model(patch=(4, 16, 24), token_stride=(2, 4, 4))  # thick slices: fewer voxels per token across them
    assert thick.token_grid == (2, 4, 6)
    assert thick(torch.randn(1, 1, 4, 16, 24), target_class=1).shape == (1, 2, 4, 16, 24)


@pytest.mark.parametrize("decoder", ["mla", "linear"])
def test_decode_with_new_clicks_on_cached_features_equals_a_full_forward(decoder):
    model = tiny_model(decoder=decoder).eval()
    image = torch.randn(2, 1, 16, 24, 32)
    clicks = torch.tensor([[[3.0, 5.0, 7.0], [10.0, 2.0, 30.0]], [[8.0, 12.0, 16.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])
    target = torch.tensor([1, 2])
    with torch.no_grad():
        features = model.encode(image)
        for n in (0, 1, 2):  # new clicks, same cached features
            cached = model.decode(features, clicks[:, :n], labels[:, :n], target)
            full = model(image, clicks[:, :n], labels[:, :n], target)
            torch.testing.assert_close(cached, full, rtol=0, atol=0)
        # padding is ignored: a padded click changes nothing
        second = model.encode(image[1:])
        one = model.decode(second, clicks[1:, :1], labels[1:, :1], target[1:])
        padded = model.decode(second, clicks[1:], labels[1:], target[1:])
        torch.testing.assert_close(one, padded, rtol=1e-5, atol=1e-5)
        # and the clicks do matter
        assert not torch.allclose(model.decode(features, clicks, labels, target),
                                  model.decode(features, None, None, target))


def test_automatic_mode_gives_multi_class_logits():
    model = tiny_model(num_classes=4).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 1, 16, 24, 32))
    assert logits.shape == (1, 4, 16, 24, 32)
    assert torch.all(logits[:, 0] == 0)


def _perturb(model: SAM3DNet) -> None:
    """Zero-initialised parts (adapter up-projections, LoRA B) would hide the gradient of what feeds them."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("policy", sorted(FINETUNE_POLICIES))
def test_gradients_reach_exactly_the_trainable_tensors(policy):
    model = tiny_model(finetune=policy)
    _perturb(model)
    image = torch.randn(2, 1, 16, 24, 32)
    clicks = torch.tensor([[[3.0, 5.0, 7.0], [10.0, 2.0, 30.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [-1, -1]])  # the second sample has no click: the no-click path
    types = torch.tensor([[1, 2], [0, 0]])  # prompt types and a dense prompt reach their extensions
    dense = torch.rand(2, 3, 16, 24, 32, generator=torch.Generator().manual_seed(1))
    logits = model(image, clicks, labels, torch.tensor([1, 2]), types, dense)
    target = torch.randint(0, 2, (2, 16, 24, 32), generator=torch.Generator().manual_seed(0))
    F.cross_entropy(logits, target).backward()

    sam_frozen = {k for k in expected_sam_keys(model) if ".norm" not in k}
    for name, p in model.named_parameters():
        if policy == "full" or name not in sam_frozen:
            assert p.requires_grad, name
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{policy}: no gradient reached {name}"
        else:
            assert not p.requires_grad and p.grad is None, f"{policy}: frozen {name} got a gradient"
    names = model.trainable_parameter_names()
    if policy == "adapter":
        assert any(".adapter." in n for n in names) and not any("lora" in n for n in names)
        for part in ("depth_embed", "depth_conv", "rel_pos_d", "necks.", "norm1", "prompt_encoder.", "mask_decoder."):
            assert any(part in n for n in names), part
    if policy == "lora":
        assert any("lora_a" in n for n in names) and not any(".adapter." in n for n in names)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(is_frozen(n, policy) for n in frozen)
    assert (len(frozen) == 0) == (policy == "full")


def test_shifted_windows_do_not_attend_across_the_volume_edge():
    """After the Swin roll, tokens at opposite edges share a window; the mask must keep them apart."""
    torch.manual_seed(0)
    block = Block3D(dim=8, num_heads=2, window_size=4, sam_rel_pos_size=27, shift=True, adapter_dim=None).eval()
    x = torch.randn(1, 8, 8, 8, 8)
    moved = x.clone()
    moved[0, 0, 0, 0] += 10.0
    with torch.no_grad():
        delta = (block(moved) - block(x)).abs().sum(-1)[0]
    assert delta[0, 0, 0] > 0 and delta[1, 1, 1] > 0  # its own window reacts
    assert delta[7, 7, 7] == 0  # the far corner, rolled into the same window, does not
    unshifted = Block3D(dim=8, num_heads=2, window_size=4, sam_rel_pos_size=27, shift=False, adapter_dim=None).eval()
    unshifted.load_state_dict(block.state_dict())
    with torch.no_grad():
        assert (unshifted(moved) - unshifted(x)).abs().sum(-1)[0, 4:, 4:, 4:].max() == 0


def test_more_input_channels_than_sam_start_as_the_channel_mean():
    torch.manual_seed(0)
    four = SAM3DNet(4, 2, patch_size=(8, 16, 8), **TINY)
    one = SAM3DNet(1, 2, patch_size=(8, 16, 8), **TINY)
    state = {k: v for k, v in four.state_dict().items() if not k.startswith(("input_mixer", "mask_decoder.image_head", "mask_decoder.fusion"))}
    one.load_state_dict(state, strict=False)
    image = torch.randn(1, 4, 8, 16, 8)
    with torch.no_grad():
        levels_four = four.encode(image).levels
        levels_one = one.encode(image.mean(1, keepdim=True)).levels
    for a, b in zip(levels_four, levels_one):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert "input_mixer.weight" in four.trainable_parameter_names()


def test_folded_relative_positions_equal_sams_explicit_bias():
    """Attention with the bias folded into q and k equals SAM's explicit decomposed bias, shifted mask included."""
    from sam3d_nnunet.model.attention import (WindowAttention3D, decomposed_rel_pos_bias, shifted_window_mask,
                                              window_partition)

    torch.manual_seed(0)
    attn = WindowAttention3D(dim=16, num_heads=2, window_size=4, sam_rel_pos_size=27).double()
    with torch.no_grad():
        for table in (attn.rel_pos_h, attn.rel_pos_w, attn.rel_pos_d):
            table.normal_()
    tokens = torch.randn(2, 8, 8, 8, 16, dtype=torch.float64)
    windows = window_partition(tokens, 4)
    mask = shifted_window_mask((8, 8, 8), 4, 2, windows.device)
    bw, n = windows.shape[0], 64
    qkv = attn.qkv(windows).reshape(bw, n, 3, 2, 8).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    bias = decomposed_rel_pos_bias(q, attn.rel_pos_d, attn.rel_pos_h, attn.rel_pos_w, (4, 4, 4))
    bias = bias.view(2, 8, 2, n, n).masked_fill(~mask[None, :, None], float("-inf")).view(bw, 2, n, n)
    logits = (q * 8 ** -0.5) @ k.transpose(-1, -2) + bias
    reference = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(bw, 4, 4, 4, 16))
    torch.testing.assert_close(attn(windows, mask), reference, rtol=1e-10, atol=1e-10)


def test_weights_of_another_architecture_are_refused_in_one_line():
    """Checkpoints of the pre-paper-exact network (no version entry) or another version are not loaded."""
    from sam3d_nnunet.model import IncompatibleCheckpointError

    model = tiny_model()
    old = {k: v for k, v in model.state_dict().items() if k != "architecture_version"}
    old["prompt_encoder.no_click_embed"] = torch.zeros(1, 32)  # a tensor only the old network had
    with pytest.raises(IncompatibleCheckpointError, match="version none") as error:
        model.load_state_dict(old)
    assert "\n" not in str(error.value)
    newer = {**model.state_dict(), "architecture_version": torch.tensor(99)}
    with pytest.raises(IncompatibleCheckpointError, match="version 99"):
        model.load_state_dict(newer)
    model.load_state_dict(tiny_model().state_dict())  # the same version loads


def test_unknown_decoder_and_bad_depth_are_refused():
    with pytest.raises(ValueError, match="unknown decoder"):
        tiny_model(decoder="unet")
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny_model(depth=3)


def test_click_maps_put_each_click_where_it_is_and_are_inert_at_zero():
    from sam3d_nnunet.model.prompt_encoder import click_balls
    clicks = torch.tensor([[[3.0, 4.0, 5.0], [10.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 0, -1]])
    balls = click_balls(clicks, labels, (16, 16, 16), radius=1.0)
    assert balls.shape == (1, 3, 16, 16, 16) and balls[:, 0].sum() == 0, "channel 0 is the previous mask"
    assert balls[0, 1, 3, 4, 5] == 1 and balls[0, 1].sum() == 7, "a positive ball of radius 1 (7 voxels)"
    assert balls[0, 2, 10, 1, 0] == 1 and balls[0, 2].sum() == 6, "a negative one, cut at the border (x = -1)"
    torch.manual_seed(0)
    plain = SAM3DNet(1, 3, variant="tiny", patch_size=(32,) * 3, token_stride=4, window_size=4).eval()
    mapped = SAM3DNet(1, 3, variant="tiny", patch_size=(32,) * 3, token_stride=4, window_size=4, click_maps=True).eval()
    mapped.load_state_dict(plain.state_dict())
    image, c, l = torch.randn(1, 1, 32, 32, 32), torch.tensor([[[8.0, 9.0, 10.0]]]), torch.ones(1, 1, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(plain(image, c, l, 1), mapped(image, c, l, 1)), "zero dense conv: exactly the paper's"
        torch.nn.init.normal_(mapped.prompt_encoder.dense_encoder.weight, std=0.1)
        moved = mapped(image, c, l, 1)
        assert not torch.allclose(plain(image, c, l, 1), moved)
        assert not torch.allclose(moved, mapped(image, c + 12, l, 1)), "the map says where the click is"
