"""WorldCompass RL post-training.

    python -m wc_jax.train --config=configs/tiny.py --workdir=/tmp/wc_rl
    python -m wc_jax.train --config=configs/hunyuan8b.py --workdir=gs://bucket/run --config.rl.group_size=12

Resumes from the newest intact checkpoint in WORKDIR; SIGTERM saves and exits. The config
and WORKDIR are checked before anything is built (a bad value ends the run in seconds with
one line naming it, and leaves nothing behind). `-v 1` shows third-party INFO logs.

Multi-host (TPU pod slices, GPU clusters): run the same command on every host. On a
multi-host TPU slice `jax.distributed` starts from the environment; elsewhere name the
cluster, e.g. `--config.distributed.coordinator_address=10.0.0.2:8476
--config.distributed.num_processes=4 --config.distributed.process_id=$RANK` (see
wc_jax/distributed.py and docs/launch.md). WORKDIR must then be shared by all hosts.
"""
from __future__ import annotations

import json
import logging

from wc_jax import cli

_CONFIG = cli.config_flag("configs/tiny.py")
_WORKDIR = cli.string_flag("workdir", "/tmp/wc_jax_train", "checkpoints, metrics and videos go here")

log = logging.getLogger("wc_jax.train")


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  from wc_jax.rl import config as run_config
  cfg = _CONFIG()
  run_config.validate(cfg, required=run_config.TRAIN_SECTIONS, rewards=run_config.TRAINER_REWARDS)
  run_config.check_workdir(_WORKDIR())
  from wc_jax import distributed
  distributed.initialize(cfg.get("distributed", None))   # before anything touches a device
  import jax
  from wc_jax.rl.logging_utils import strict_json
  from wc_jax.rl.components import build_reward_stage
  from wc_jax.rl.trainer import Trainer
  from wc_jax.models.worldplay.config import from_config
  stage = build_reward_stage(cfg, from_config(cfg.model).latent_channels)
  trainer = Trainer(cfg, _WORKDIR(), reward_stage=stage)
  last = trainer.run()
  if jax.process_index() == 0 and last:     # {} when there was nothing to do (logged)
    print(json.dumps(strict_json(last), indent=2))


if __name__ == "__main__":
  cli.run(main)
