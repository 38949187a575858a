"""What the RL loop (wc_jax.rl.trainer.Trainer.run) needs from a world model, and the factory that
picks the world model from the config's `family`.

The loop owns everything generic: resuming from the newest checkpoint, the step loop, metrics.jsonl,
the rollout videos, checkpoints (orbax: the backbone's train state + its data state + the config),
SIGTERM and preemption. A backbone owns one RL step: its rollouts -> decoded frames + rewards ->
advantages (GRPO, best-of-N) -> its update, and what the loop saves and shows:

* `mesh`: the mesh its programs run on (None: one device);
* `data`: an iterator with `get_state()` / `set_state(dict)` (the data state in a checkpoint);
* `init_state()`: the train state, a pytree of arrays (checkpointed and restored in place);
* `step(state, step) -> (state, metrics, media)`: one RL step; metrics a flat dict (reward/<name>/mean,
  loss, ...; `clip` for the log line), media (frames [G, F, H, W, 3] in [0, 1], combined scores [G])
  for the step's video, or None.

Families: "worldplay" (default when `family` is absent) is the Trainer's own step (rollouts in AR
chunks, wc_jax.rl.root builds its programs); "lingbot" is wc_jax.rl.lingbot.LingBotBackbone.
"""
from __future__ import annotations

from typing import Any, Protocol

FAMILIES = ("worldplay", "lingbot")


class Backbone(Protocol):
  mesh: Any
  data: Any

  def init_state(self) -> Any:
    ...

  def step(self, state: Any, step: int) -> tuple[Any, dict, Any]:
    ...


def family(cfg) -> str:
  from wc_jax.rl.config import ConfigError
  name = cfg.get("family", "worldplay")
  if name not in FAMILIES:
    raise ConfigError("family", name, f"must be one of {FAMILIES} (the world model to post-train)")
  return name


def validate(cfg) -> None:
  """The training entry point's config check for the config's family (raises ConfigError)."""
  from wc_jax.rl import config as run_config
  if family(cfg) == "lingbot":
    from wc_jax.rl import lingbot
    lingbot.validate(cfg, required=lingbot.TRAIN_SECTIONS)
    return
  run_config.validate(cfg, required=run_config.TRAIN_SECTIONS, rewards=run_config.TRAINER_REWARDS)


def build_trainer(cfg, workdir: str, *, mesh=None):
  """The Trainer of the config's family (its reward models, data and programs built here)."""
  from wc_jax.rl.trainer import Trainer
  if family(cfg) == "lingbot":
    from wc_jax.rl.lingbot import LingBotBackbone
    return Trainer(cfg, workdir, backbone=LingBotBackbone(cfg, mesh))
  from wc_jax.models.worldplay.config import from_config
  from wc_jax.rl.components import build_reward_stage
  stage = build_reward_stage(cfg, from_config(cfg.model).latent_channels)
  return Trainer(cfg, workdir, reward_stage=stage, mesh=mesh)
