"""Shape and dtype checks shared by the reward functions.

They run at trace time (shapes are static under jit/vmap), so a bad call fails
before anything is compiled, with a message that names the function, the
argument, what was expected and what was passed.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np


def shape_of(x) -> tuple[int, ...]:
  return tuple(np.shape(x))


def fail(fn: str, arg: str, expected: str, x) -> None:
  raise ValueError(f"{fn}: {arg} must be {expected}, got shape {shape_of(x)}"
                   f"{'' if not hasattr(x, 'dtype') else f' dtype {x.dtype}'}")


def check_ndim(fn: str, arg: str, x, ndim: int, expected: str) -> None:
  if len(shape_of(x)) != ndim:
    fail(fn, arg, expected, x)


def check_trailing(fn: str, arg: str, x, trailing: Sequence[tuple[int, ...]], ndim: int,
                   expected: str) -> None:
  s = shape_of(x)
  if len(s) != ndim or tuple(s[ndim - len(trailing[0]):]) not in [tuple(t) for t in trailing]:
    fail(fn, arg, expected, x)


def check_integer(fn: str, arg: str, x, expected: str) -> None:
  dt = getattr(x, "dtype", None)
  if dt is None:
    dt = np.asarray(x).dtype
  if not jnp.issubdtype(dt, jnp.integer):
    fail(fn, arg, expected, x)


def check_floating(fn: str, arg: str, x, expected: str) -> None:
  dt = getattr(x, "dtype", None)
  if dt is None:
    dt = np.asarray(x).dtype
  if not (jnp.issubdtype(dt, jnp.floating) or jnp.issubdtype(dt, jnp.integer)):
    fail(fn, arg, expected, x)


def check_images(fn: str, arg: str, x, *, batched: bool = True) -> None:
  """Images are channels-last RGB: [N,H,W,3] (batched) or [H,W,3]."""
  ndim = 4 if batched else 3
  what = "[N,H,W,3] RGB images" if batched else "an [H,W,3] RGB image"
  s = shape_of(x)
  if len(s) != ndim or s[-1] != 3:
    fail(fn, arg, what, x)
  check_floating(fn, arg, x, what)


def as_scores(fn: str, who: str, scores, n: int):
  """Accepts a scorer output of shape [N] or [N,1] and returns [N] float32."""
  s = shape_of(scores)
  if s == (n, 1):
    scores = scores[:, 0]
  elif s != (n,):
    raise ValueError(f"{fn}: {who} must return [N] or [N,1] scores for N={n} images, "
                     f"got shape {s}")
  return jnp.asarray(scores, jnp.float32)
