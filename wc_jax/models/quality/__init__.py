"""Image-quality scorers for the visual-quality rewards (CLIP ViT + aesthetic head)."""
from wc_jax.models.quality.clip import (LAION_V2_HEAD, LINEAR_HEAD, VIT_B_32, VIT_L_14,
                                        AestheticHead, AestheticHeadConfig, ClipAestheticScorer,
                                        ClipImageEncoder, ClipVisionConfig, ClipVisionTower,
                                        preprocess, tiny_config)
from wc_jax.models.quality.convert import (build_scorer, load_scorer, random_scorer, save_scorer,
                                           scorer_params)

__all__ = [
    "LAION_V2_HEAD", "LINEAR_HEAD", "VIT_B_32", "VIT_L_14", "AestheticHead", "AestheticHeadConfig",
    "ClipAestheticScorer", "ClipImageEncoder", "ClipVisionConfig", "ClipVisionTower", "preprocess",
    "tiny_config", "build_scorer", "load_scorer", "random_scorer", "save_scorer", "scorer_params",
]
