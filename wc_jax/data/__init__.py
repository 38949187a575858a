"""Data: commanded trajectories, trajectory records (TFDS array_record), the grain
pipeline, and a synthetic 3-D world with ground-truth video, poses and depth.

See docs/data.md. Submodules import lazily heavy dependencies (TFDS, grain).
"""
from wc_jax.data.trajectories import (FRAMES_PER_LATENT, MOTION_KEYS, PRIMITIVE_WEIGHTS,
                                      PRIMITIVES, Trajectory, frame_poses, load_pose_json,
                                      motions_to_poses, normalized_intrinsics,
                                      parse_action_string, random_motions, random_trajectory,
                                      trajectory_from_motions, trajectory_from_poses,
                                      trajectory_from_string)

__all__ = [
    "FRAMES_PER_LATENT", "MOTION_KEYS", "PRIMITIVE_WEIGHTS", "PRIMITIVES", "Trajectory",
    "frame_poses", "load_pose_json", "motions_to_poses", "normalized_intrinsics",
    "parse_action_string", "random_motions", "random_trajectory", "trajectory_from_motions",
    "trajectory_from_poses", "trajectory_from_string",
]
