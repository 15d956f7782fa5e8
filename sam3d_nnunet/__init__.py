"""sam3d_nnunet: Segment Anything's ViT adapted to promptable 3D segmentation, inside nnU-Net v2."""
import warnings as _warnings

__version__ = "0.1.0"

# timm (imported by nnU-Net's network code) decorates classes with torch.jit.interface, which torch deprecates
# with a FutureWarning on every import: noise for our users, nothing they can act on. Only that warning is
# silenced, before anything of ours imports timm.
_warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning)
