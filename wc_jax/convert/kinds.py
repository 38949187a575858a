"""The model kinds a wc_jax checkpoint can hold: the one set of names.

Every Orbax checkpoint (written by `python -m wc_jax.convert` or by a trainer) records
one of these as `kind` in its wc_jax.json; `wc_jax.convert.load_model(kind, path)`
checks it.
"""
DIT = "dit"                         # WorldPlay / HunyuanVideo-1.5 DiT (wc_jax.models.worldplay)
VAE = "vae"                         # HunyuanVideo-1.5 causal 3-D VAE (wc_jax.models.vae)
DA3 = "da3"                         # Depth Anything 3 pose network (wc_jax.models.da3)
CLIP_AESTHETIC = "clip_aesthetic"   # CLIP ViT + LAION aesthetic head (wc_jax.models.quality)

ALL = (DIT, VAE, DA3, CLIP_AESTHETIC)
