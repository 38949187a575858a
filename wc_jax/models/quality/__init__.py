"""Image-quality scorers for the visual-quality rewards (CLIP ViT + aesthetic head).

Models do no file I/O: loading weights (HF safetensors or a wc_jax Orbax folder) is the
checkpoint layer's job (the `convert` package: `quality.load_scorer`, `quality.random_scorer`,
`load_model(kinds.CLIP_AESTHETIC, path)`).
"""
from wc_jax.models.quality.clip import (LAION_V2_HEAD, LINEAR_HEAD, VIT_B_32, VIT_L_14,
                                        AestheticHead, AestheticHeadConfig, ClipAestheticScorer,
                                        ClipImageEncoder, ClipVisionConfig, ClipVisionTower,
                                        preprocess, tiny_config)

__all__ = [
    "LAION_V2_HEAD", "LINEAR_HEAD", "VIT_B_32", "VIT_L_14", "AestheticHead", "AestheticHeadConfig",
    "ClipAestheticScorer", "ClipImageEncoder", "ClipVisionConfig", "ClipVisionTower", "preprocess",
    "tiny_config",
]
