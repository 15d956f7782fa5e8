"""nnU-Net trainers for the SAM 3D adapter (installed as ``sam3d_nnunet.trainers``)."""
