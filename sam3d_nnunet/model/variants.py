"""SAM image-encoder variants and the 3D geometry (crop, token stride, window) the adapter runs at."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence, Union


@dataclass(frozen=True)
class SAMVariant:
    """The shape of one SAM ViT image encoder, as in ``segment_anything.build_sam``."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    default_adapter_dim: int
    default_neck_dim: int = 256  # width of the necks, the prompt encoder and the decoder
    sam_window_size: int = 14  # SAM's 2D window: windowed blocks carry 2*14-1 relative positions
    sam_grid: int = 64  # SAM's 1024x1024 input / 16x16 patches
    sam_patch: int = 16
    mlp_ratio: float = 4.0

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def neck_block_indexes(self) -> tuple[int, ...]:
        """Blocks whose output feeds a 3D neck: the ends of the four quarters (3, 6, 9, 12 of 12)."""
        quarter = self.depth // 4
        return tuple(quarter * (k + 1) - 1 for k in range(4))

    def sam_rel_pos_size(self, block: int) -> int:
        """Length of SAM's h/w relative-position tables in ``block`` (global blocks span the 64 grid)."""
        span = self.sam_grid if block in self.global_attn_indexes else self.sam_window_size
        return 2 * span - 1


SAM_VARIANTS: dict[str, SAMVariant] = {
    "vit_b": SAMVariant("vit_b", 768, 12, 12, (2, 5, 8, 11), default_adapter_dim=384),
    "vit_l": SAMVariant("vit_l", 1024, 24, 16, (5, 11, 17, 23), default_adapter_dim=512),
    "vit_h": SAMVariant("vit_h", 1280, 32, 16, (7, 15, 23, 31), default_adapter_dim=640),
    # Not a published SAM: a small encoder of the same structure, for tests and CPU demos.
    "tiny": SAMVariant("tiny", 64, 4, 4, (1, 3), default_adapter_dim=32, default_neck_dim=32),
}


def with_depth(variant: SAMVariant, depth: int | None) -> SAMVariant:
    """``variant`` cut to its first ``depth`` blocks (None: unchanged); SAM's global-attention blocks among
    them keep their long relative-position tables, and the necks follow the quarters of the new depth."""
    if depth is None or depth == variant.depth:
        return variant
    if not 1 <= depth <= variant.depth:
        raise ValueError(f"depth must lie in 1..{variant.depth} for {variant.name}, got {depth}")
    if depth % 4:
        raise ValueError(f"depth must be a multiple of 4 (a neck after each quarter of the blocks), got {depth}")
    return replace(variant, depth=depth,
                   global_attn_indexes=tuple(i for i in variant.global_attn_indexes if i < depth))


def get_variant(name: str) -> SAMVariant:
    try:
        return SAM_VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown SAM variant {name!r}; choose one of {sorted(SAM_VARIANTS)}") from None


TokenStride = Union[int, Sequence[int]]


def per_axis(token_stride: TokenStride) -> tuple[int, int, int]:
    """A token stride as three per-axis strides (an int means the same along every axis)."""
    strides = (token_stride,) * 3 if isinstance(token_stride, int) else tuple(int(s) for s in token_stride)
    if len(strides) != 3:
        raise ValueError(f"token_stride must be an int or 3 ints, got {token_stride}")
    for stride in strides:
        if stride < 1 or 16 % stride:
            raise ValueError(f"token_stride must divide SAM's 16-pixel patch (1, 2, 4, 8, 16), got {token_stride}")
    return strides  # type: ignore[return-value]


def token_grid(patch_size: Sequence[int], token_stride: TokenStride, window_size: int) -> tuple[int, int, int]:
    """The token grid of a crop; every axis must hold a whole number of attention windows.

    ``token_stride`` may differ per axis: on thick-slice images a stride of 1 or 2 across the slices and 4
    in-plane keeps the tokens' physical extent close to isotropic without resampling the slices.
    """
    if len(patch_size) != 3:
        raise ValueError(f"patch_size must have 3 axes, got {tuple(patch_size)}")
    strides = per_axis(token_stride)
    for axis, (size, stride) in enumerate(zip(patch_size, strides)):
        unit = stride * window_size
        if size % unit:
            raise ValueError(
                f"patch_size {tuple(patch_size)}: axis {axis} ({size}) is not a multiple of "
                f"token_stride x window_size = {stride} x {window_size} = {unit}"
            )
    return tuple(size // stride for size, stride in zip(patch_size, strides))  # type: ignore[return-value]
