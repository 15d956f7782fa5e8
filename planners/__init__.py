"""nnU-Net experiment planners for the SAM 3D adapter (installed as ``sam3d_nnunet.planners``)."""
