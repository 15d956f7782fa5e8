"""nnU-Net trainers for the SAM 3D adapter (installed as ``sam3d_nnunet.trainers``).

The classes live in ``sam3d_nnunet.trainers.nnUNetTrainerSAM3D``; ``nnunet_ext/`` is the folder for nnU-Net's
``nnUNet_extTrainer`` variable (``sam3d-nnunet ext-trainer-dir`` prints it).
"""
