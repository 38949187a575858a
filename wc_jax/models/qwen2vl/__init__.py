"""The Qwen2-VL family (Qwen2-VL and Qwen2.5-VL as config) in Flax NNX: the language model
(`language`), the vision tower (`vision`), the image/chat processor (`processor`) and HPSv3
on top (`hpsv3`).

Models do no file I/O; the checkpoint converter is `wc_jax.convert.hpsv3` (its
`language_entries` maps any Qwen2 text checkpoint onto `Qwen2LanguageModel`).
"""
from wc_jax.models.qwen2vl.hpsv3 import HPSV3, HPSv3Config, HPSv3Model
from wc_jax.models.qwen2vl.language import (HPSV3_7B, QWEN2_VL_7B, QWEN25_VL_7B, LMOutput, Qwen2LanguageModel,
                                            Qwen2LMConfig, mrope_positions)
from wc_jax.models.qwen2vl.vision import VisionConfig, VisionTransformer

__all__ = ["HPSV3", "HPSv3Config", "HPSv3Model", "HPSV3_7B", "QWEN2_VL_7B", "QWEN25_VL_7B", "LMOutput",
           "Qwen2LanguageModel", "Qwen2LMConfig", "mrope_positions", "VisionConfig", "VisionTransformer"]
