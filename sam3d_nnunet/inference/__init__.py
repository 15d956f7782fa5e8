"""Prompted whole-volume prediction, shared by the trainer's validation and the ``predict`` command."""
from sam3d_nnunet.inference.prompted_predictor import (
    ClassPrompt,
    PredictionReport,
    PromptedPredictor,
    merge_class_probabilities,
    protocol_prompts_from_label,
    raw_to_preprocessed_coords,
    sam3d_trainers_visible,
)

__all__ = ["ClassPrompt", "PredictionReport", "PromptedPredictor", "merge_class_probabilities",
           "protocol_prompts_from_label", "raw_to_preprocessed_coords", "sam3d_trainers_visible"]

# interactive session, prediction helpers and I/O of the ``predict`` command
from sam3d_nnunet.inference.io import ImageGeometry, ImageReadError, InferenceInputError  # noqa: E402
from sam3d_nnunet.inference.session import CachingNetwork, InteractiveSession, predict_case  # noqa: E402

__all__ += ["ImageGeometry", "ImageReadError", "InferenceInputError", "CachingNetwork", "InteractiveSession",
            "predict_case"]
