"""The checkpoint layer: reference (torch safetensors) <-> wc_jax Orbax converters, the
model kinds, and the loaders (`load_model(kind, path)`, `load_params(path)`).
CLI: `python -m wc_jax.convert`."""
from wc_jax.convert import kinds
from wc_jax.convert.kinds import CLIP_AESTHETIC, DA3, DIT, VAE
from wc_jax.convert.registry import load_model, load_params

__all__ = ["kinds", "CLIP_AESTHETIC", "DA3", "DIT", "VAE", "load_model", "load_params"]
