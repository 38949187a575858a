"""wc_jax: WorldCompass (RL post-training of the WorldPlay video world model) in JAX."""
import flax as _flax

# Parameters carry *logical* axis names ("embed", "mlp", ...), which wc_jax.sharding maps
# onto mesh axes explicitly. Flax's eager sharding would treat them as mesh axes, so it is
# turned off for the whole package.
_flax.config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"
