"""The synthetic-world reproduction (wc_jax.world): latent map, base objective, rewards, RL."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from wc_jax.rewards.registry import RewardWindow
from wc_jax.world import base_train as B
from wc_jax.world import data as D
from wc_jax.world import reward as R
from wc_jax.world.latent import PatchLatent


def micro_config():
  """configs/synthetic.py shrunk to seconds: 16x16 frames, a 1-layer 32-wide DiT."""
  c = load_config("synthetic")
  c.world.height = c.world.width = 16
  c.model.update(dict(hidden_size=32, heads=2, depth=1, rope_dims=(4, 6, 6), refiner_depth=1))
  c.sampling.update(dict(steps=2, latent_height=4, latent_width=4))
  c.idm.update(dict(widths=(16, 32), hidden=64, batch_size=16, lr=3e-3))
  c.rl.update(dict(total_steps=1, trajectories_per_step=1, group_size=4, best_of_n=2, rollout_steps=2, max_clip=2))
  return c


def test_latent_round_trip_is_exact():
  x = np.random.default_rng(0).random((2, 3, 16, 24, 3)).astype(np.float32)
  lat = PatchLatent(4).fitted(x)
  z = lat.encode(x)
  assert z.shape == (2, 48, 3, 4, 6)
  np.testing.assert_allclose(np.asarray(z).std(), 1.0, atol=0.05)
  np.testing.assert_allclose(np.asarray(lat.decode(z)), x, atol=1e-5)
  assert PatchLatent.from_dict(lat.to_dict()) == lat


def test_global_latent_scale_keeps_the_energy_of_each_frequency():
  # a smooth image: the DC channels carry far more energy than the high frequencies
  yy, xx = np.meshgrid(np.linspace(0, 1, 16), np.linspace(0, 1, 24), indexing="ij")
  rng = np.random.default_rng(1)
  x = np.stack([0.5 + 0.4 * (np.sin(2 * xx + a) * np.cos(3 * yy + b))[..., None] * np.array([1.0, 0.8, 0.6])
                for a, b in rng.random((6, 2)) * 6]).reshape(2, 3, 16, 24, 3).astype(np.float32)
  per_channel, shared = PatchLatent(4).fitted(x), PatchLatent(4).fitted(x, scale="global")
  assert len(set(shared.std)) == 1 and len(set(per_channel.std)) > 1
  z = np.asarray(shared.encode(x))
  np.testing.assert_allclose(np.sqrt(np.mean(z.var(axis=(0, 2, 3, 4)))), 1.0, rtol=1e-3)
  energy = z.var(axis=(0, 2, 3, 4))
  assert energy[0] > 20 * energy[15]          # DC vs the highest frequency of red
  np.testing.assert_allclose(np.asarray(shared.decode(shared.encode(x))), x, atol=1e-5)
  with pytest.raises(ValueError, match="scale must be 'channel' or 'global'"):
    PatchLatent(4).fitted(x, scale="pixel")


def test_latent_bad_inputs():
  with pytest.raises(ValueError, match="multiples of 4"):
    PatchLatent(4).encode(np.zeros((1, 2, 10, 16, 3)))
  with pytest.raises(ValueError, match=r"\[..., 48, F, h, w\]"):
    PatchLatent(4).decode(np.zeros((1, 12, 2, 4, 4)))
  with pytest.raises(ValueError, match="mean needs 48 values"):
    PatchLatent(4, mean=(0.0,))


def test_trajectories_agree_with_rendered_motion():
  wc = B.world_config(micro_config())
  c = D.make_clips(2, 9, [0, 1], 5, wc)
  assert c.frames.shape == (2, 9, 16, 16, 3) and c.actions[:, 0].tolist() == [0, 0]
  assert (c.actions[:, 1:] != 0).all()           # every later latent commands a motion
  assert np.abs(np.diff(c.frames, axis=1)).mean() > 0.02
  with pytest.raises(ValueError, match="num_latents must be >= 1"):
    D.random_trajectory(0, 0)


def test_base_objective_decreases():
  cfg = micro_config()
  from flax import nnx
  from wc_jax.models.worldplay.config import from_config
  from wc_jax.models.worldplay.model import WorldPlayDiT, functional
  import optax
  clips = D.make_clips(4, 8, [0, 1], 0, B.world_config(cfg))
  lat = PatchLatent(4).fitted(clips.frames)
  x0 = lat.encode(clips.frames)
  mcfg = from_config(cfg.model)
  apply, params = functional(WorldPlayDiT(mcfg, rngs=nnx.Rngs(0)))
  loss_fn = B.make_loss(apply, mcfg, shift=3.0, clean_context_prob=0.5, context_timestep=14.0)
  states = D.conditioning(mcfg, cfg.text)
  tx = optax.adam(1e-2)
  key = jax.random.key(0)

  @jax.jit
  def step(p, o):
    def f(p):
      batch = (x0, B.build_cond(x0[:, :, 0], 8), jnp.asarray(clips.actions, jnp.float32), jnp.asarray(clips.w2c),
               jnp.asarray(clips.Ks), B.encode_text_tokens(apply, p, states))
      return loss_fn(p, batch, key)
    loss, g = jax.value_and_grad(f)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  opt = tx.init(params)
  losses = []
  for _ in range(6):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  # one fixed batch, noise and sigmas: the objective must go down step after step
  assert np.isfinite(losses).all() and (np.diff(losses) < 0).all() and losses[-1] < 0.95 * losses[0], losses


def test_label_noise_shows_chunks_the_labels_of_another_clip():
  """label_noise = p: about a fraction p of chunks see the (rolled) labels of another clip."""
  seen = {}

  def fake_apply(params, name, hs, timestep, text, *, action, **kw):
    seen["action"] = action
    return jnp.zeros(hs.shape[:1] + (hs.shape[1] - 49,) + hs.shape[2:])

  class M:
    chunk_latents = 4

  b, t = 64, 12
  actions = jnp.asarray(np.random.default_rng(0).integers(1, 81, (b, t)), jnp.float32)
  x0 = jnp.zeros((b, 48, t, 2, 2))
  batch = (x0, B.build_cond(x0[:, :, 0], t), actions, None, None, {})
  for p in (0.0, 0.5):
    B.make_loss(fake_apply, M, shift=3.0, clean_context_prob=0.0, context_timestep=14.0,
                label_noise=p)(None, batch, jax.random.key(1))
    got = np.asarray(seen["action"]).reshape(b, 3, 4)
    want, rolled = np.asarray(actions).reshape(b, 3, 4), np.roll(np.asarray(actions), 1, 0).reshape(b, 3, 4)
    same = (got == want).all(-1)
    assert ((got == want).all(-1) | (got == rolled).all(-1)).all()   # whole chunks, true or another clip's
    frac = 1 - same.mean()
    assert (frac == 0) if p == 0 else (0.4 < frac < 0.6), (p, frac)
  with pytest.raises(ValueError, match=r"label_noise must be in \[0, 1\)"):
    B.make_loss(fake_apply, M, shift=3.0, clean_context_prob=0.0, context_timestep=14.0, label_noise=1.0)


def test_chunk_sigmas_are_shifted_logit_normal():
  s = np.asarray(B.chunk_sigmas(jax.random.key(0), 4000, 3, 3.0))
  assert s.shape == (4000, 3) and 0 < s.min() and s.max() < 1
  assert abs(np.median(s) - 0.75) < 0.03          # sigmoid(0) = 0.5 shifted by 3 -> 0.75


@pytest.fixture(scope="module")
def trained_idm():
  """A small IDM fitted on ground truth at 24x24 (the IDM reads any frame size)."""
  cfg = micro_config()
  cfg.world.height = cfg.world.width = 24
  clips = D.make_clips(64, 6, range(8), 100, B.world_config(cfg))
  model, _ = R.train_idm(clips.frames, clips.actions, cfg, seed=0, steps=150, log=lambda s: None)
  return cfg, model


def test_reward_prefers_the_commanded_action(trained_idm):
  cfg, idm = trained_idm
  held = D.make_clips(12, 5, range(50, 56), 900, B.world_config(cfg))
  stage = R.make_reward_stage(PatchLatent(4), idm, {"idm": 2.0, "drift": 1.0})
  frames = jnp.asarray(held.frames)
  # stage rewards score ONE candidate: fn(frames [F,H,W,3], RewardWindow)
  win = lambda i, a: RewardWindow(first_frame=frames[i, 0], actions=jnp.asarray(held.actions[a]))
  right = jax.vmap(lambda f: stage.rewards["idm"](f, win(0, 0)))(frames)
  # each clip scored against its own commands vs another clip's commands
  own = np.array([float(stage.rewards["idm"](frames[i], win(i, i))) for i in range(12)])
  other = np.array([float(stage.rewards["idm"](frames[i], win(i, (i + 1) % 12))) for i in range(12)])
  assert right.shape == (12,)
  assert own.mean() > other.mean() + 0.3, (own.mean(), other.mean())
  # drift: a clip blurred after its sharp first frame drifts more than the clip itself
  blur = jnp.asarray(held.frames.reshape(12, 5, 12, 2, 12, 2, 3).mean((3, 5)).repeat(2, 2).repeat(2, 3))
  blur = blur.at[:, 0].set(frames[:, 0])
  sharp = np.array([float(stage.rewards["drift"](frames[i], win(i, i))) for i in range(12)])
  blurred = np.array([float(stage.rewards["drift"](blur[i], win(i, i))) for i in range(12)])
  assert sharp.mean() > blurred.mean() + 0.05 and (sharp > blurred).mean() >= 0.75, (sharp, blurred)


def test_reward_bad_inputs(trained_idm):
  cfg, idm = trained_idm
  with pytest.raises(ValueError, match="unknown rewards"):
    R.make_reward_stage(PatchLatent(4), idm, {"idm": 1.0, "hps": 1.0})
  with pytest.raises(ValueError, match=r"need frames \[N,L,H,W,3\] and actions \[N,L\]"):
    R.train_idm(np.zeros((2, 3, 16, 16, 3)), np.zeros((2, 4), np.int32), cfg, seed=0, steps=1)


def test_one_rl_step_with_the_world_stage(trained_idm, tmp_path):
  from wc_jax.rl.trainer import Trainer
  _, idm = trained_idm
  cfg = micro_config()
  cfg.model.init = "random"
  cfg.rl.update(dict(max_clip=1, rollout_steps=1))   # one compiled rollout program: seconds, not minutes
  lat = PatchLatent(4)
  data = D.WorldTrajectories(lat, cfg.model, cfg.text, 4, [0, 1], 0, B.world_config(cfg))
  trainer = Trainer(cfg, str(tmp_path), reward_stage=R.make_reward_stage(lat, idm, {"idm": 2.0, "drift": 1.0}),
                    data=data)
  out = trainer.run()
  assert out["step"] == 1 and out["kept"] == 2 and np.isfinite(out["loss"])
  assert -10.0 <= out["reward/idm/mean"] <= 0.0 and out["reward/drift/mean"] <= 0.0
  assert data.get_state() == {"index": 1}


def _bits(a):
  a = np.ascontiguousarray(np.asarray(a))
  return a.view(np.uint8)


@pytest.mark.parametrize("refiner_depth", [1, 2])
def test_base_checkpoint_loads_and_exports_like_a_converted_dit(tmp_path, capsys, refiner_depth):
  """base_train's checkpoint is an ordinary "dit" checkpoint: load_model reads it, and
  `python -m wc_jax.convert --orbax ... --to-torch` exports it (and back, bit-exactly) when
  the reference constructor can express the architecture; otherwise it says what it cannot."""
  from flax import nnx
  from wc_jax.convert import __main__ as convert_cli
  from wc_jax.convert import kinds, load_model
  from wc_jax.convert.common import ConversionError
  from wc_jax.models.worldplay.config import from_config
  from wc_jax.models.worldplay.model import WorldPlayDiT, functional, randomize
  cfg = micro_config()
  cfg.model.refiner_depth = refiner_depth
  model = randomize(WorldPlayDiT(from_config(cfg.model), rngs=nnx.Rngs(0)), 0)
  _, params = functional(model)
  B.save_params(params, tmp_path / "model", cfg, {"steps": 3})
  want = nnx.to_flat_state(nnx.state(model, nnx.Param))

  def same_weights(m):
    got = dict(nnx.to_flat_state(nnx.state(m, nnx.Param)))
    assert len(got) == len(want)
    for k, v in want:
      assert np.array_equal(_bits(got[k].get_value()), _bits(v.get_value())), k

  loaded = load_model(kinds.DIT, tmp_path / "model")
  assert loaded.cfg == from_config(cfg.model)
  same_weights(loaded)
  with pytest.raises(ConversionError, match=r"holds a 'dit' checkpoint, not a 'vae' one"):
    load_model(kinds.VAE, tmp_path / "model")
  if refiner_depth == 1:   # configs/synthetic.py: the reference hard-codes a 2-block token refiner
    assert convert_cli.main(["--orbax", str(tmp_path / "model"), "--to-torch", str(tmp_path / "torch")]) == 2
    err = capsys.readouterr().err
    assert "cannot be exported as a reference checkpoint" in err
    assert "refiner_depth=1 (a reference config.json can only mean 2)" in err
    return
  assert convert_cli.main(["--orbax", str(tmp_path / "model"), "--to-torch", str(tmp_path / "torch")]) == 0
  assert convert_cli.main(["--torch", str(tmp_path / "torch"), "--out", str(tmp_path / "again")]) == 0
  same_weights(load_model(kinds.DIT, tmp_path / "again"))
  same_weights(load_model(kinds.DIT, tmp_path / "torch"))   # a reference folder loads directly too


def test_staged_base_training_continues_the_model(tmp_path):
  """base.init continues a trained base in its own latent map: at lr 0 the second stage's (EMA)
  weights are exactly the first stage's, not a fresh init; a folder without latent.json is a clear error."""
  from wc_jax.convert.common import load_orbax
  cfg = micro_config()
  cfg.world.train_clips, cfg.world.train_latents = 4, 8
  cfg.base.update(dict(steps=3, batch_size=2, log_every=3))
  B.train(cfg, str(tmp_path / "a"), log=lambda m: None)
  cfg.base.update(dict(init=str(tmp_path / "a" / "model"), steps=12, lr=0.0, ema_decay=0.5))
  init, latent = B.staged_init(cfg)
  B.train(cfg, str(tmp_path / "b"), init=init, latent=latent, ema_on_init=True, log=lambda m: None)
  first = jax.tree.leaves(load_orbax(tmp_path / "a" / "model")[0])
  second = jax.tree.leaves(load_orbax(tmp_path / "b" / "model")[0])
  assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(first, second))
  assert (tmp_path / "b" / "latent.json").read_text() == (tmp_path / "a" / "latent.json").read_text()
  (tmp_path / "c").mkdir()
  cfg.base.init = str(tmp_path / "c" / "model")
  with pytest.raises(FileNotFoundError, match="no .*latent.json beside it"):
    B.staged_init(cfg)


def test_base_restarts_schedule_and_its_errors(tmp_path):
  """base.restarts joins cosine cycles (each warms up again to its own peak and decays to 10 %
  of it); cycles that do not cover base.steps, or a malformed spec, fail before any clip is made."""
  sched = B.lr_schedule("450:3e-3,600:2e-3", 1050, 1.0, 100)     # warmup: min(100, steps // 5) per cycle
  assert float(sched(90)) == pytest.approx(3e-3) and float(sched(449)) == pytest.approx(3e-4, rel=0.01)
  assert float(sched(450)) == pytest.approx(0.0) and float(sched(550)) == pytest.approx(2e-3)
  assert float(sched(1049)) == pytest.approx(2e-4, rel=0.01)
  single = B.lr_schedule("", 450, 3e-3, 100)
  assert all(float(single(i)) == pytest.approx(float(sched(i))) for i in (0, 50, 100, 300, 449))
  cfg = micro_config()
  cfg.world.train_clips, cfg.world.train_latents = 4, 8
  cfg.base.update(dict(steps=5, batch_size=2, log_every=5, restarts="2:1e-3,2:5e-4"))
  with pytest.raises(ValueError, match=r"covers 4 steps but the run has 5 \(set base.steps=4\)"):
    B.train(cfg, str(tmp_path / "a"), log=lambda m: None)
  assert not (tmp_path / "a" / "train_clips.npz").exists()
  for bad in ("2:1e-3;2:5e-4", "2", "1:1e-3", "2:-1"):
    with pytest.raises(ValueError, match="base.restarts="):
      B.parse_restarts(bad)
  cfg.base.steps = 4
  out = B.train(cfg, str(tmp_path / "b"), log=lambda m: None)
  assert len(out["losses"]) == 4 and (tmp_path / "b" / "model" / "wc_jax.json").exists()


def test_base_training_writes_snapshots_midway(tmp_path):
  """base.snapshot_every=k saves the weights every k steps (not at the end, which is `model/`):
  a loadable "dit" checkpoint per snapshot, each the weights of its step, not copies of one."""
  from wc_jax.convert import kinds, load_model
  from wc_jax.convert.common import load_orbax
  cfg = micro_config()
  cfg.world.train_clips, cfg.world.train_latents = 4, 8
  cfg.base.update(dict(steps=4, batch_size=2, snapshot_every=2, log_every=2))
  B.train(cfg, str(tmp_path), log=lambda m: None)
  snaps = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
  assert snaps == ["step000002"], snaps
  load_model(kinds.DIT, tmp_path / "snapshots" / "step000002")
  mid = jax.tree.leaves(load_orbax(tmp_path / "snapshots" / "step000002")[0])
  end = jax.tree.leaves(load_orbax(tmp_path / "model")[0])
  assert len(mid) == len(end)
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(mid, end))
