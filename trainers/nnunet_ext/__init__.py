"""The folder printed by ``sam3d-nnunet ext-trainer-dir`` for nnU-Net's ``nnUNet_extTrainer``.

nnU-Net imports every module of this folder as a TOP-LEVEL module and drops it from ``sys.modules``
afterwards; the module here only re-exports the trainer classes of ``sam3d_nnunet.trainers``, so the classes
keep their real ``__module__`` (pickling, spawned workers and checkpoints stay correct). Its name is unique
on purpose: a module named like an installed package would shadow that package while the folder is on
``sys.path``.
"""
