"""WorldCompass RL post-training.

    python -m wc_jax.train --config=configs/tiny.py --workdir=/tmp/wc_rl
    python -m wc_jax.train --config=configs/hunyuan8b.py --workdir=gs://bucket/run --config.rl.group_size=12

Resumes from the newest checkpoint in WORKDIR; SIGTERM saves and exits.
"""
from __future__ import annotations

import json
import logging

from absl import app

from wc_jax import cli

_CONFIG = cli.config_flag("configs/tiny.py")
_WORKDIR = cli.string_flag("workdir", "/tmp/wc_jax_train", "checkpoints, metrics and videos go here")


def main(argv):
  del argv
  from wc_jax.rl.components import build_reward_stage
  from wc_jax.rl.trainer import Trainer
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
  cfg = _CONFIG()
  from wc_jax.models.worldplay.config import from_config
  stage = build_reward_stage(cfg, from_config(cfg.model).latent_channels)
  trainer = Trainer(cfg, _WORKDIR(), reward_stage=stage)
  last = trainer.run()
  print(json.dumps(last, indent=2))


if __name__ == "__main__":
  app.run(main)
