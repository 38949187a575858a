"""Jit-compiling a reward together with the model (pose net, scorer, encoder) it calls.

A model is passed to a reward as an argument. A Flax NNX module (or a bound
method of one) is split into a static graph and traced weights, so its
parameters are arguments of the compiled program rather than constants baked
into it, and one compilation serves every weight update. Any other callable
(a plain function, a functools.partial, a lambda over arrays) is a static
argument: it must be hashable, and a new object means a new compilation.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
from flax import nnx


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 4))
def _call_split(impl, graphdef, method, state, static_kw, args):
  model = nnx.merge(graphdef, state)
  fn = model if method is None else getattr(model, method)
  return impl(fn, *args, **dict(static_kw))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _call_static(impl, model, static_kw, args):
  return impl(model, *args, **dict(static_kw))


def call_with_model(impl: Callable, model: Any, args: tuple, static_kw: dict | None = None):
  """Runs `impl(model, *args, **static_kw)` under jit.

  Args:
    impl: a module-level function (hashable, so the compilation is cached).
    model: an nnx.Module, a bound method of one, or a hashable callable.
    args: array arguments (traced).
    static_kw: hashable keyword options (static).
  """
  kw = tuple(sorted((static_kw or {}).items()))
  if not callable(model):
    raise TypeError(f"{impl.__name__}: the model argument must be callable, got {type(model).__name__}")
  owner, method = model, None
  if inspect.ismethod(model) and isinstance(model.__self__, nnx.Module):
    owner, method = model.__self__, model.__name__
  if isinstance(owner, nnx.Module):
    graphdef, state = nnx.split(owner)
    return _call_split(impl, graphdef, method, state, kw, args)
  try:
    hash(model)
  except TypeError:
    raise TypeError(f"{impl.__name__}: a model that is not an nnx.Module must be hashable "
                    f"(it is a static jit argument), got {type(model).__name__}") from None
  return _call_static(impl, model, kw, args)


class BoundModel(nnx.Module):
  """An nnx.Module plus an adaptor `fn(module, *args)`, usable wherever a reward
  takes a model: the weights stay traced (a lambda closing over the module
  would be a static argument and bake them into the program as constants)."""

  def __init__(self, module: nnx.Module, fn: Callable):
    if not isinstance(module, nnx.Module):
      raise TypeError(f"bind_model: module must be an nnx.Module, got {type(module).__name__}")
    self.module = module
    self.fn = fn

  def __call__(self, *args):
    return self.fn(self.module, *args)


def bind_model(module: nnx.Module, fn: Callable) -> BoundModel:
  """E.g. `bind_model(da3, lambda m, frames: m(frames).extrinsics)` as a pose_model."""
  return BoundModel(module, fn)
