"""Stacked layers for the encoders: built with nnx.vmap, run with nnx.scan under nnx.remat."""
from __future__ import annotations

from flax import nnx


def stacked(make, n: int, rngs: nnx.Rngs):
  """`n` layers from `make(rngs)` with a leading "layers" axis on every parameter."""

  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def build(rngs):
    return make(rngs)

  return build(rngs)


def scan_layers(layers, fn, carry, n: int, remat: bool = True):
  """carry -> (carry, per-layer outputs) with `fn(layer, carry) -> (carry, y)` over the stack.

  Inference never differentiates, so remat costs nothing here; it keeps the loop the same as
  the trainable models' when an encoder is fine-tuned."""

  def body(layer, carry):
    return fn(layer, carry)

  if remat:
    body = nnx.remat(body, prevent_cse=False)
  scan = nnx.scan(body, in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0), length=n)
  return scan(layers, carry)
