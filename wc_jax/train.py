"""WorldCompass RL post-training.

    python -m wc_jax.train --config=configs/tiny.py --workdir=/tmp/wc_rl
    python -m wc_jax.train --config=configs/hunyuan8b.py --workdir=gs://bucket/run --config.rl.group_size=12
    python -m wc_jax.train --config=configs/lingbot_tiny.py --workdir=/tmp/wc_lingbot_rl

The config's `family` picks the world model (wc_jax.rl.backbone): WorldPlay (default) or
LingBot-World (whole-clip rollouts, wc_jax.rl.lingbot).

Resumes from the newest intact checkpoint in WORKDIR (local or gs://); SIGTERM, or a TPU
preemption notice on a multi-host slice, saves at the next step boundary and exits.
`--compile_cache_dir=DIR` (or $WC_JAX_COMPILATION_CACHE_DIR; local or gs://) keeps compiled
programs across runs, so a relaunched job skips most of its compile time. The config
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
import os

from wc_jax import cli

_CONFIG = cli.config_flag("configs/tiny.py")
_WORKDIR = cli.string_flag("workdir", "/tmp/wc_jax_train", "checkpoints, metrics and videos go here")
_CACHE = cli.string_flag("compile_cache_dir", "", "persistent XLA compilation cache (local or gs://); "
                         "default $WC_JAX_COMPILATION_CACHE_DIR, '' with no such variable: off")

log = logging.getLogger("wc_jax.train")


def use_compilation_cache(cache_dir: str) -> None:
  """JAX's persistent compilation cache in `cache_dir` ('' leaves JAX's settings alone). Every
  program that took over a second to compile is kept: a relaunch after a preemption, or the
  next run of the same config, loads it instead of compiling again."""
  if not cache_dir:
    return
  import jax
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  from wc_jax.rl import backbone
  from wc_jax.rl import config as run_config
  cfg = _CONFIG()
  backbone.validate(cfg)                  # the config's world model (`family`: worldplay | lingbot)
  run_config.check_workdir(_WORKDIR())
  from wc_jax import distributed
  distributed.initialize(cfg.get("distributed", None))   # before anything touches a device
  use_compilation_cache(_CACHE() or os.environ.get("WC_JAX_COMPILATION_CACHE_DIR", ""))
  import jax
  from wc_jax.rl.logging_utils import strict_json
  trainer = backbone.build_trainer(cfg, _WORKDIR())
  last = trainer.run()
  if jax.process_index() == 0 and last:     # {} when there was nothing to do (logged)
    print(json.dumps(strict_json(last), indent=2))


if __name__ == "__main__":
  cli.run(main)
