"""WorldPlay generator (HunyuanVideo-1.5 DiT + action branches)."""
from wc_jax.models.worldplay.config import DiTConfig
from wc_jax.models.worldplay.model import (TextCache, TextTokens, VisionCache, WorldPlayDiT, abstract_model,
                                           build)
