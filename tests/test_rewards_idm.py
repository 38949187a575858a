"""SWIRL inverse-dynamics model: reward, shapes, and a short fit on synthetic motion."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wc_jax.models import idm as idm_lib
from wc_jax.rewards import idm_reward

CFG = idm_lib.IDMConfig(in_channels=1, frames_per_step=1, widths=(16,), hidden=32)
# three classes on the 81-way scale: none (0), right (3*9=27), left (4*9=36)
SHIFTS = {0: 0, 27: 1, 36: -1}


def _batch(rng, b=16, steps=2, hw=8):
  """Textures that shift by one pixel per step: right, left or not at all."""
  labels = rng.choice(list(SHIFTS), size=(b, steps))
  base = rng.uniform(size=(b, hw, hw)).astype(np.float32)
  clips = np.empty((b, steps + 1, hw, hw, 1), np.float32)
  for i in range(b):
    img = base[i]
    clips[i, 0, ..., 0] = img
    for s in range(steps):
      img = np.roll(img, SHIFTS[int(labels[i, s])], axis=1)
      clips[i, s + 1, ..., 0] = img
  return clips, labels.astype(np.int32)


@pytest.fixture(scope="module")
def trained():
  model = idm_lib.init_idm(CFG, seed=0)
  rng = np.random.default_rng(0)
  data = (_batch(rng) for _ in range(10_000))
  opt = idm_lib.make_optimizer(model, learning_rate=3e-3)
  hist = idm_lib.fit(model, data, 100, opt)
  return model, hist


def test_idm_fit_learns_synthetic_motion(trained):
  model, hist = trained
  first, last = np.mean([h[0] for h in hist[:5]]), np.mean([h[0] for h in hist[-5:]])
  assert last < 0.5 * first, (first, last)
  clips, labels = _batch(np.random.default_rng(1), b=32)
  logits = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(clips))
  acc = np.mean(np.argmax(np.asarray(logits), -1) == labels)
  assert acc > 0.8


def test_idm_reward_prefers_the_commanded_action(trained):
  model, _ = trained
  clips, labels = _batch(np.random.default_rng(2), b=4)
  right = jax.vmap(lambda c, a: idm_reward(c, a, model))(clips, labels)
  wrong = jax.vmap(lambda c, a: idm_reward(c, a, model))(clips, (labels + 9) % 81)
  assert np.all(np.asarray(right) > np.asarray(wrong))
  assert np.all(np.asarray(wrong) >= -10.0) and np.all(np.asarray(right) <= 0)


def test_idm_reward_clamp_alignment_and_errors():
  logits = lambda c: jnp.stack([jnp.full((81,), -50.0).at[5].set(50.0)] * (c.shape[0] - 1))
  clip = jnp.zeros((3, 2, 2, 1))
  # two steps, three commanded latents (first-chunk style): the last two are scored
  assert float(idm_reward(clip, jnp.asarray([9, 5, 5]), logits)) == pytest.approx(0.0, abs=1e-6)
  assert float(idm_reward(clip, jnp.asarray([5, 5, 7]), logits)) == pytest.approx(-5.0)
  assert float(idm_reward(clip, jnp.asarray([5, 7, 7]), logits, reduce="sum")) == -20.0
  with pytest.raises(ValueError, match="the idm gives 2 steps but only 1 commanded actions"):
    idm_reward(clip, jnp.asarray([5]), logits)
  with pytest.raises(ValueError, match=r"idm must map a clip to \[S,A\] action logits"):
    idm_reward(clip, jnp.asarray([5, 5]), lambda c: c[:, 0, 0, 0])
  with pytest.raises(ValueError, match=r"clip must be \[F,H,W,C\] frames or latents"):
    idm_reward(clip[0], jnp.asarray([5, 5]), logits)
  with pytest.raises(ValueError, match="reduce must be one of"):
    idm_reward(clip, jnp.asarray([5, 5]), logits, reduce="max")


def test_idm_model_shapes_and_errors():
  cfg = idm_lib.IDMConfig(in_channels=3, frames_per_step=4, widths=(4,), hidden=8)
  assert cfg.num_steps(17) == 4 and cfg.num_steps(13) == 3
  with pytest.raises(ValueError, match=r"needs S\*4\+1 inputs"):
    cfg.num_steps(16)
  m = idm_lib.init_idm(cfg)
  assert jax.eval_shape(lambda x: m(x), jnp.zeros((2, 17, 8, 8, 3))).shape == (2, 4, 81)
  with pytest.raises(ValueError, match=r"inputs must be \[F,H,W,3\]"):
    m(jnp.zeros((17, 8, 8, 1)))
  with pytest.raises(ValueError, match=r"actions must be \[B,L\] with B=2"):
    idm_lib.idm_loss(m, jnp.zeros((2, 17, 8, 8, 3)), jnp.zeros((3, 4), jnp.int32))


def test_idm_more_bad_inputs():
  with pytest.raises(ValueError, match="bad IDMConfig"):
    idm_lib.IDMConfig(frames_per_step=0)
  with pytest.raises(ValueError, match="3 IDM steps need at least 3 commanded actions, got 2"):
    idm_lib.step_targets(jnp.zeros((2,), jnp.int32), 3)
  m = idm_lib.init_idm(CFG)
  with pytest.raises(ValueError, match=r"idm_loss: clips must be \[B,F,H,W,C\]"):
    idm_lib.idm_loss(m, jnp.zeros((3, 8, 8, 1)), jnp.zeros((1, 2), jnp.int32))
