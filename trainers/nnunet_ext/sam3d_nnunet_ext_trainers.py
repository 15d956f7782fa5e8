from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import *  # noqa: F401,F403  (nnU-Net's nnUNet_extTrainer hook)
