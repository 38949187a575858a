"""Flag helpers shared by the entry points (`python -m wc_jax.<name>`).

Several entry points are importable as libraries; absl flags are process-global, so each
flag is defined once, whoever asks first.
"""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags


def config_flag(default: str):
  """The `--config` flag (an ml_collections config file, overridable with --config.x.y=...)."""
  if "config" not in flags.FLAGS:
    config_flags.DEFINE_config_file("config", default, "ml_collections config file (get_config())")
  return lambda: flags.FLAGS.config


def string_flag(name: str, default: str, help_text: str):
  if name not in flags.FLAGS:
    flags.DEFINE_string(name, default, help_text)
  return lambda: getattr(flags.FLAGS, name)
