"""sam3d_nnunet: Segment Anything's ViT adapted to promptable 3D segmentation, inside nnU-Net v2."""

__version__ = "0.1.0"
