"""nnU-Net experiment planners for the SAM 3D adapter (installed as ``sam3d_nnunet.planners``)."""

PLANNERS = ("SAM3DPlanner",)


def __getattr__(name):  # lazy: importing the package does not import nnU-Net
    if name in PLANNERS:
        from sam3d_nnunet.planners import sam3d_planner
        return getattr(sam3d_planner, name)
    raise AttributeError(name)
