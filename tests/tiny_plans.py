"""The minimal SAM3D plans dict (what SAM3DPlanner writes, for the tiny variant) that fast tests build models
and predictors from, and the dataset.json that goes with it."""
from __future__ import annotations

import numpy as np

DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "tumour": 2},
                "numTraining": 2, "file_ending": ".nii.gz"}


def tiny_plans(patch=(32, 32, 32), spacing=(1.0, 1.0, 1.0), transpose=(0, 1, 2), norm="CTNormalization",
               arch_kwargs=None, dataset_name="Dataset999_Fake") -> dict:
    back = [int(np.argwhere(np.array(transpose) == i)[0][0]) for i in range(3)]
    resample = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset_name, "plans_name": "SAM3DPlans",
        "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": list(patch),
        "image_reader_writer": "SimpleITKIO", "transpose_forward": list(transpose), "transpose_backward": back,
        "experiment_planner_used": "SAM3DPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"max": 200.0, "mean": 60.0, "median": 60.0,
                                                              "min": -50.0, "percentile_00_5": -20.0,
                                                              "percentile_99_5": 150.0, "std": 30.0}},
        "configurations": {"3d_fullres": {
            "data_identifier": "SAM3DPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": list(patch),
            "spacing": list(spacing), "normalization_schemes": [norm], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resample,
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_seg_kwargs": {**resample, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {**resample, "order": 1},
            "architecture": {"network_class_name": "sam3d_nnunet.model.SAM3DNet",
                             "arch_kwargs": arch_kwargs or {"variant": "tiny", "patch_size": list(patch),
                                                            "token_stride": 4, "window_size": 4, "adapter_dim": 32,
                                                            "neck_dim": 32, "finetune": "adapter"},
                             "_kw_requires_import": []},
            "batch_dice": False}},
    }
