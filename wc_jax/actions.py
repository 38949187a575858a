"""The 81-way action vocabulary WorldPlay is conditioned on: translation (9) x rotation (9).

A bottom-layer module: the DiT's action embedding, the IDM's head, the data records and the
rewards all speak it; how labels are read from camera poses lives in `wc_jax.rewards.labels`.
"""
from __future__ import annotations

NUM_TRANS = 9
NUM_ROT = 9
NUM_ACTIONS = NUM_TRANS * NUM_ROT

TRANS_NAMES = ("none", "forward", "backward", "right", "left", "forward+right", "forward+left",
               "backward+right", "backward+left")
ROT_NAMES = ("none", "yaw_right", "yaw_left", "pitch_up", "pitch_down", "right+up", "right+down",
             "left+up", "left+down")


def split_action(action):
  """81-way label -> (translation 0..8, rotation 0..8); ints or integer arrays."""
  return action // NUM_ROT, action % NUM_ROT


def merge_action(trans, rot):
  """(translation, rotation) labels -> 81-way label."""
  return trans * NUM_ROT + rot
