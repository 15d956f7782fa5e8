"""Prompts: clicks, boxes, scribbles, lassos and masks (``shapes``), seeded simulation for training and evaluation
(``simulation``, ``shape_simulation``), and user prompt files (``click_files``).

Clicks are voxel coordinates in the ARRAY AXIS ORDER of the array they refer to ((z, y, x) for
nnU-Net arrays) with label 1 = positive, 0 = negative, -1 = padding in batches. Only click files use
(x, y, z) order, the order of SimpleITK and image viewers; ``to_array_indices`` converts.
Pure numpy / scipy / cc3d / torch (SimpleITK only as an argument): no nnU-Net import here.
"""
from sam3d_nnunet.prompts.click_files import (
    COORDINATE_SYSTEMS,
    FILE_PROMPT_TYPES,
    Click,
    ClickFile,
    ClickFileError,
    FilePrompt,
    case_clicks_to_arrays,
    case_prompts,
    from_array_indices,
    read_click_file,
    to_array_indices,
    validate_case_id,
    write_click_file,
)
from sam3d_nnunet.prompts.simulation import (
    CorrectionClick,
    RngLike,
    TrainingPrompt,
    add_correction_clicks,
    as_rng,
    binary_target,
    case_class_seed,
    correction_click,
    protocol_clicks,
    sample_training_prompt,
    simulate_training_prompts,
)

from sam3d_nnunet.prompts.shape_simulation import (PromptBatch, add_correction_prompts, check_mix,
                                                   simulate_box, simulate_lasso, simulate_prompt_batch,
                                                   simulate_scribble)
from sam3d_nnunet.prompts.shapes import (DENSE_CHANNELS, PROMPT_TYPES, BoxPrompt, ClickPrompt, EncodedPrompts,
                                         LassoPrompt, MaskPrompt, Prompt, PromptError, ScribblePrompt, encode_prompts,
                                         validate_prompt)

__all__ = [
    "FILE_PROMPT_TYPES", "FilePrompt", "case_prompts", "PromptBatch", "add_correction_prompts", "check_mix",
    "simulate_box", "simulate_lasso", "simulate_prompt_batch", "simulate_scribble", "DENSE_CHANNELS",
    "PROMPT_TYPES", "BoxPrompt", "ClickPrompt", "EncodedPrompts", "LassoPrompt", "MaskPrompt", "Prompt",
    "PromptError", "ScribblePrompt", "encode_prompts", "validate_prompt",
    "COORDINATE_SYSTEMS", "Click", "ClickFile", "ClickFileError", "case_clicks_to_arrays",
    "from_array_indices", "read_click_file", "to_array_indices", "validate_case_id", "write_click_file",
    "CorrectionClick", "RngLike", "TrainingPrompt", "add_correction_clicks", "as_rng", "binary_target",
    "case_class_seed", "correction_click", "protocol_clicks", "sample_training_prompt",
    "simulate_training_prompts",
]
