"""wc_jax: WorldCompass RL post-training for action-conditioned video world models, in JAX."""
from setuptools import find_packages, setup

setup(
    name="wc_jax",
    version="0.1.0",
    description="WorldCompass (RL post-training of the WorldPlay video world model) in JAX/Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["wc_jax", "wc_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "grain>=0.2.12,<0.3",
        "einops>=0.8,<0.9",
        "ml-collections>=1.0,<2",
        "tensorflow-datasets>=4.9,<5",
        "safetensors>=0.5,<1",
        "numpy>=1.26,<3",
        "absl-py>=2.0",
        "pillow>=10",
        "tensorboardX>=2.6",
        "tqdm>=4.60",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3", "import-linter>=2.1,<3", "ruff>=0.14,<0.18"],
        "tpu": ["jax[tpu]>=0.7,<0.11"],
    },
)
