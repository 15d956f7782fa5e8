"""sam3d_nnunet: the 3DSAM-adapter promptable 3D segmenter inside nnU-Net v2.

`planners/` and `trainers/` live at the top level of the repository (the design card's layout) but
install as `sam3d_nnunet.planners` and `sam3d_nnunet.trainers`, so nothing generic lands in
site-packages.
"""
from setuptools import setup

setup(
    name="sam3d_nnunet",
    version="0.1.0",
    description="Segment Anything's ViT adapted to 3D with spatial adapters, trained and evaluated inside nnU-Net v2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[
        "sam3d_nnunet",
        "sam3d_nnunet.model",
        "sam3d_nnunet.commands",
        "sam3d_nnunet.evaluation",
        "sam3d_nnunet.conversion",
        "sam3d_nnunet.prompts",
        "sam3d_nnunet.planners",
        "sam3d_nnunet.trainers",
        "sam3d_nnunet.trainers.nnunet_ext",
        "sam3d_nnunet.inference",
        "sam3d_nnunet.napari_plugin",
        "sam3d_nnunet.benchmark",
    ],
    package_dir={
        "sam3d_nnunet": "sam3d_nnunet",
        "sam3d_nnunet.planners": "planners",
        "sam3d_nnunet.trainers": "trainers",
    },
    package_data={"sam3d_nnunet.napari_plugin": ["napari.yaml"]},
    install_requires=[
        "torch>=2.1",
        "nnunetv2==2.8.1",
        "segment-anything>=1.0",
        "SimpleITK>=2.2",
        "batchgenerators>=0.25",
        "acvl-utils>=0.2",
        "connected-components-3d>=3.12",
        "surface-distance>=0.1",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "nibabel>=5.0",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6"],
        # the napari plug-in (sam3d_nnunet/napari_plugin); never needed by the core package or the command line
        "napari": ["napari>=0.5", "PyQt6>=6.5", "pytest-qt>=4"],
    },
    entry_points={
        "console_scripts": ["sam3d-nnunet=sam3d_nnunet.cli:main"],
        "napari.manifest": ["sam3d_nnunet = sam3d_nnunet.napari_plugin:napari.yaml"],
    },
)
