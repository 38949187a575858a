"""The model kinds a wc_jax checkpoint can hold: the one set of names.

Every Orbax checkpoint (written by `python -m wc_jax.convert` or by a trainer) records
one of these as `kind` in its wc_jax.json; `wc_jax.convert.load_model(kind, path)`
checks it.
"""
DIT = "dit"                         # WorldPlay / HunyuanVideo-1.5 DiT (wc_jax.models.worldplay)
VAE = "vae"                         # HunyuanVideo-1.5 causal 3-D VAE (wc_jax.models.vae)
DA3 = "da3"                         # Depth Anything 3 pose network (wc_jax.models.da3)
CLIP_AESTHETIC = "clip_aesthetic"   # CLIP ViT + LAION aesthetic head (wc_jax.models.quality)
HPSV3 = "hpsv3"                     # HPSv3 reward model, Qwen2-VL-7B + head (wc_jax.models.qwen2vl)
IDM = "idm"                         # wc_jax's inverse-dynamics model (wc_jax.models.idm; no reference layout)
BYT5, SIGLIP, QWEN25VL_TEXT = "byt5", "siglip", "qwen25vl_text"  # conditioning encoders (wc_jax.models.encoders)
UMT5 = "umt5"                       # umT5-XXL text encoder of LingBot-World / Wan (wc_jax.models.encoders.umt5)
LINGBOT_DIT = "lingbot_dit"         # LingBot-World expert: Wan2.2 DiT + camera branch (wc_jax.models.lingbot)
WAN_VAE = "wan_vae"                 # Wan2.1 causal 3-D VAE of LingBot-World (wc_jax.models.wan_vae)

ALL = (DIT, VAE, DA3, CLIP_AESTHETIC, HPSV3, IDM, BYT5, SIGLIP, QWEN25VL_TEXT, LINGBOT_DIT, WAN_VAE, UMT5)
