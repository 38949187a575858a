"""`python -m wc_jax.plan`: see wc_jax/plan/__init__.py."""
from wc_jax import cli
from wc_jax.plan import main

if __name__ == "__main__":
  cli.run(main)
