"""Inference: the flow-matching sampling maths (`sampling`), FOV context retrieval
(`context`) and the one autoregressive chunk engine (`engine.ChunkEngine`) that generation,
RL rollouts and evaluation share."""
from wc_jax.inference.context import fov_overlap, select_context, sphere_points
from wc_jax.inference.engine import (RETRIEVAL_POINTS, RETRIEVAL_RADIUS, ChunkEngine, ClipSample, Rollout,
                                     denoise_candidates, i2v_condition)
from wc_jax.inference.sampling import euler, sigmas
from wc_jax.inference import unipc  # noqa: F401  UniPC + CFG sampler with the two-expert switch (LingBot-World)

__all__ = ["ChunkEngine", "ClipSample", "RETRIEVAL_POINTS", "RETRIEVAL_RADIUS", "Rollout", "denoise_candidates",
           "euler", "fov_overlap", "i2v_condition", "select_context", "sigmas", "sphere_points"]
