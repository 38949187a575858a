"""Depth Anything 3 (pose network of the interaction reward) in Flax NNX."""
from wc_jax.models.da3.config import PRESETS, DA3Config, from_reference_config, preset
from wc_jax.models.da3.model import (DepthAnything3, abstract_model, estimate_poses, forward,
                                     from_params, init_model, load_params, make_pose_model,
                                     PoseModel)

__all__ = ["PRESETS", "DA3Config", "DepthAnything3", "abstract_model", "estimate_poses", "forward",
           "from_params", "from_reference_config", "init_model", "load_params", "make_pose_model",
           "PoseModel", "preset"]
