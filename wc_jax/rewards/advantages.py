"""Group advantages and best-of-N selection (the reference's `_prepare_grpo_inputs`).

Rewards arrive as [P,G]: P prompt groups (one shared context each) of G
candidates (G = 12 in WorldCompass). Each reward k is z-scored separately:

    A_k = (R_k - mean over the group) / (std_k + 1e-8)

with std_k, by `std_type`:

* "global" (the released config): unbiased std over all P*G candidates of the
  whole batch. Under jit with the [P,G] array sharded over the data axes this
  is the std over every candidate on every device.
* "group" (the reference's "sample"): unbiased std over the group's G.
* "group_max" (the reference's "sample_max"): the largest group std.

The weighted sum of the A_k ranks the candidates; best-of-N keeps the N/2
highest and N/2 lowest of each group (the extremes carry the signal).

Reference layout artefacts, reproduced only when `reference_ranks_per_group=g`
> 1 (g GPU ranks sharing one group, each holding G/g candidates in order):

* the global std is taken over a gather in which every group appears g times
  (unbiased std of the duplicated array: slightly smaller);
* selection is per rank: each rank keeps its last `(-(N//2)) // g` (a floor of
  a negative number, i.e. ceil) and first `(N//2) // g` sorted candidates; with
  g = 2, N = 6 that is top 2 + bottom 1 per rank, not top 3 + bottom 3.

The default g = 1 is the clean behaviour and equals the released configuration.
"""
from __future__ import annotations

import functools
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp

from wc_jax.rewards import _checks

STD_TYPES = ("global", "group", "group_max")
_STD_ALIASES = {"sample": "group", "sample_max": "group_max"}
STD_TYPE_NAMES = STD_TYPES + tuple(_STD_ALIASES)   # every accepted `std_type`, reference names included
EPS = 1e-8


class GroupAdvantage(NamedTuple):
  advantage: jax.Array  # [P,G] float32
  mean: jax.Array       # [P] group means
  std: jax.Array        # [P] divisor actually used (std + eps)


class GrpoInputs(NamedTuple):
  advantages: dict      # name -> [P,G] per-reward z-scores
  means: dict           # name -> [P]
  stds: dict            # name -> [P]
  combined: jax.Array   # [P,G] weighted sum (selection score)
  kept: jax.Array       # [P,G] bool, best-of-N mask


def _std_type(std_type: str) -> str:
  s = _STD_ALIASES.get(std_type, std_type)
  if s not in STD_TYPES:
    raise ValueError(f"std_type must be one of {STD_TYPES} (or the reference names "
                     f"{tuple(_STD_ALIASES)}), got {std_type!r}")
  return s


def _check_rewards(fn: str, arg: str, rewards) -> None:
  s = _checks.shape_of(rewards)
  if len(s) != 2 or s[1] < 2:
    _checks.fail(fn, arg, "[P,G] rewards (P groups of G >= 2 candidates)", rewards)
  _checks.check_floating(fn, arg, rewards, "[P,G] rewards")


@functools.partial(jax.jit, static_argnames=("std_type", "reference_ranks_per_group"))
def group_advantages(rewards, *, std_type: str = "global", eps: float = EPS,
                     reference_ranks_per_group: int = 1) -> GroupAdvantage:
  """Z-scores one reward per group.

  Args:
    rewards: [P,G] float rewards.
    std_type: "global" (default), "group" or "group_max" (see module doc).
    eps: added to the std.
    reference_ranks_per_group: g > 1 reproduces the reference's duplicated
      gather for "global" (see module doc); G must divide by g.

  Returns:
    GroupAdvantage(advantage [P,G], mean [P], std [P]).
  """
  _check_rewards("group_advantages", "rewards", rewards)
  std_type = _std_type(std_type)
  g = _ranks(rewards, reference_ranks_per_group, "group_advantages")
  r = jnp.asarray(rewards, jnp.float32)
  p = r.shape[0]
  mean = jnp.mean(r, axis=1)
  if std_type == "global":
    gathered = jnp.repeat(r, g, axis=0) if g > 1 else r
    std = jnp.broadcast_to(jnp.std(gathered, ddof=1) + eps, (p,))
  else:
    std = jnp.std(r, axis=1, ddof=1) + eps
    if std_type == "group_max":
      std = jnp.broadcast_to(jnp.max(std), (p,))
  return GroupAdvantage((r - mean[:, None]) / std[:, None], mean, std)


def _ranks(x, g, fn) -> int:
  g = int(g)
  n = _checks.shape_of(x)[1]
  if g < 1 or n % g:
    raise ValueError(f"{fn}: reference_ranks_per_group must be >= 1 and divide the group size "
                     f"{n}, got {g}")
  return g


def combine_advantages(advantages: Mapping[str, jax.Array], weights: Mapping[str, float], *,
                       normalize_weights: bool = False):
  """Weighted sum of per-reward advantages.

  Args:
    advantages: name -> [P,G] (or any common shape) advantages.
    weights: name -> weight; every name needs an advantage (zero weights may
      be omitted).
    normalize_weights: False (default) = sum_k w_k A_k, the selection score of
      the reference (`combined = 2*A_action + 1*A_drift`, fixture parity);
      True = sum_k (w_k / sum w) A_k, the advantage the NFT loss uses
      (DESIGN.md's 2/3, 1/3). Both rank candidates identically; they differ
      by the factor sum(w), which matters before clipping.

  Returns:
    float32 array of the advantages' shape.
  """
  missing = sorted(k for k, w in weights.items() if w != 0 and k not in advantages)
  if missing:
    raise ValueError(f"combine_advantages: weights name {missing} but advantages has only "
                     f"{sorted(advantages)}")
  names = [k for k, w in weights.items() if k in advantages]
  if not names:
    raise ValueError("combine_advantages: no weighted advantage to combine")
  shapes = {k: _checks.shape_of(advantages[k]) for k in names}
  if len(set(shapes.values())) != 1:
    raise ValueError(f"combine_advantages: advantages must share one shape, got {shapes}")
  items = tuple((k, float(weights[k])) for k in names)
  if normalize_weights and sum(w for _, w in items) == 0:
    raise ValueError("combine_advantages: weights sum to 0, cannot normalize")
  return _combine({k: advantages[k] for k in names}, items, normalize_weights)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _combine(advantages, items, normalize_weights):
  total = sum(w for _, w in items)
  scale = 1.0 / total if normalize_weights else 1.0
  out = 0.0
  for k, w in items:
    out = out + jnp.float32(w * scale) * jnp.asarray(advantages[k], jnp.float32)
  return out


@functools.partial(jax.jit, static_argnames=("n", "reference_ranks_per_group"))
def best_of_n_mask(scores, n: int = 6, *, reference_ranks_per_group: int = 1):
  """Best-of-N selection: keep the N/2 best and N/2 worst candidates of each group.

  Args:
    scores: [P,G] selection scores (e.g. the combined advantage).
    n: N, candidates kept per group (N//2 from each end; static).
    reference_ranks_per_group: g > 1 selects per rank as the reference does
      with g ranks per group (top ceil((N//2)/g), bottom floor((N//2)/g) of
      each rank's G/g candidates; see module doc).

  Returns:
    bool [P,G]. Ties keep the lower candidate index among the worst and the
    higher index among the best (stable sort).
  """
  fn = "best_of_n_mask"
  _check_rewards(fn, "scores", scores)
  g = _ranks(scores, reference_ranks_per_group, fn)
  p, size = _checks.shape_of(scores)
  half = int(n) // 2
  local = size // g
  top, bottom = -(-half // g), half // g
  if n < 2 or top + bottom > local:
    raise ValueError(f"{fn}: cannot keep {top} best + {bottom} worst of {local} candidates "
                     f"per {'rank' if g > 1 else 'group'} (n={n}, G={size}, ranks per group={g})")
  s = jnp.asarray(scores, jnp.float32).reshape(p * g, local)
  order = jnp.argsort(s, axis=1, stable=True)
  rank = jnp.argsort(order, axis=1, stable=True)
  kept = (rank >= local - top) | (rank < bottom)
  return kept.reshape(p, size)


def prepare_grpo(rewards: Mapping[str, jax.Array], weights: Mapping[str, float], *,
                 std_type: str = "global", best_of_n: int = 6,
                 normalize_weights: bool = False, eps: float = EPS,
                 reference_ranks_per_group: int = 1) -> GrpoInputs:
  """Per-reward advantages, their weighted sum and the best-of-N mask.

  Args:
    rewards: name -> [P,G] rewards (e.g. {"fine_action": ..., "drift": ...}).
    weights: name -> weight (released config: fine_action 2.0, drift 1.0).
    std_type, eps, reference_ranks_per_group: see `group_advantages`.
    best_of_n: candidates kept per group; None or >= G keeps all.
    normalize_weights: see `combine_advantages` (default False: raw weights,
      as the reference ranks).

  Returns:
    GrpoInputs. Every reward in `rewards` gets an advantage (zero-weight ones
    too, for logging); only weighted ones enter `combined`.
  """
  if not rewards:
    raise ValueError("prepare_grpo: no rewards given")
  try:
    items = tuple((k, float(w)) for k, w in weights.items())
  except (TypeError, ValueError):
    raise TypeError("prepare_grpo: weights must be Python numbers (they are static)") from None
  return _prepare(dict(rewards), items, std_type, best_of_n, normalize_weights, eps,
                  reference_ranks_per_group)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 6))
def _prepare(rewards, weight_items, std_type, best_of_n, normalize_weights, eps,
             reference_ranks_per_group):
  weights = dict(weight_items)
  shapes = {k: _checks.shape_of(v) for k, v in rewards.items()}
  if len(set(shapes.values())) != 1:
    raise ValueError(f"prepare_grpo: all rewards must share one [P,G] shape, got {shapes}")
  advs, means, stds = {}, {}, {}
  for k, r in rewards.items():
    ga = group_advantages(r, std_type=std_type, eps=eps,
                          reference_ranks_per_group=reference_ranks_per_group)
    advs[k], means[k], stds[k] = ga
  combined = combine_advantages(advs, weights, normalize_weights=normalize_weights)
  size = next(iter(shapes.values()))[1]
  if best_of_n is None or best_of_n >= size:
    kept = jnp.ones(combined.shape, bool)
  else:
    kept = best_of_n_mask(combined, best_of_n, reference_ranks_per_group=reference_ranks_per_group)
  return GrpoInputs(advs, means, stds, combined, kept)


def shuffle_within_groups(rewards: Mapping[str, jax.Array], key: jax.Array) -> dict:
  """The shuffled-reward control: every group's candidates get the rewards of a random
  permutation of the group (one permutation per group, shared by all rewards, so each
  candidate keeps a coherent reward vector that belongs to another candidate).

  Training on these keeps the advantage statistics and the update's size but removes any
  link between a candidate and its reward, so whatever an RL run gains over this control
  comes from the reward's information, not from the mechanics of the update.

  Args:
    rewards: name -> [P,G] rewards.
    key: a JAX PRNG key.

  Returns:
    name -> [P,G] permuted rewards.
  """
  if not rewards:
    raise ValueError("shuffle_within_groups: no rewards given")
  shapes = {k: _checks.shape_of(v) for k, v in rewards.items()}
  if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
    raise ValueError(f"shuffle_within_groups: all rewards must share one [P,G] shape, got {shapes}")
  p, g = next(iter(shapes.values()))
  perm = jax.vmap(lambda k: jax.random.permutation(k, g))(jax.random.split(key, p))     # [P,G]
  return {k: jnp.take_along_axis(jnp.asarray(v), perm, axis=1) for k, v in rewards.items()}

