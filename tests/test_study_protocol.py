"""The small-scale study's protocol (issue 18): render-and-compare judge, paired bootstrap,
headroom numbers, shuffled-reward control, lossy latent, corrupted poses, stage caches."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, load_config
from wc_jax.data import trajectories as T
from wc_jax.data import synthetic_world as sw
from wc_jax.rewards.advantages import shuffle_within_groups
from wc_jax.world import base_train as B
from wc_jax.world import data as D
from wc_jax.world import evaluate as E
from wc_jax.world import judge as J
from wc_jax.world import reward as R
from wc_jax.world import stats as S
from wc_jax.world.latent import PatchLatent

sys.path.insert(0, str(REPO / "benchmarks"))


def small_world(**kw):
  return D.WorldConfig(**{**dict(height=16, width=16, step=0.5, angle_deg=15.0, max_pitch_deg=30.0, detail=0.0), **kw})


def every_primitive_clip(cfg, scene=10003):
  """One clip that commands every primitive of the world once (pitch up, then down)."""
  names = list(D.PRIMITIVES)
  ang = np.deg2rad(cfg.angle_deg)
  rows = [np.zeros(6)] + [np.concatenate([np.asarray(D.PRIMITIVES[n][0][:4], float) * cfg.step,
                                          np.asarray(D.PRIMITIVES[n][0][4:], float) * ang]) for n in names]
  tr = T.trajectory_from_motions(np.stack(rows), k=D._pixel_k(cfg))
  frames = D.render_poses(sw.make_scene(scene, detail=cfg.detail), tr.c2w, cfg)
  n = len(rows)
  return D.Clips(frames[None], tr.actions[None].astype(np.int32), tr.w2c[None].astype(np.float32),
                 np.broadcast_to(D.intrinsics(cfg).astype(np.float32), (1, n, 3, 3)).copy(), np.array([scene]))


@pytest.fixture(scope="module")
def judged():
  cfg = small_world()
  clips = every_primitive_clip(cfg)
  more = D.make_clips(3, 6, [10001, 10002], 77, cfg)
  return cfg, clips, J.candidate_renders(clips, cfg), more, J.candidate_renders(more, cfg)


def test_render_judge_reads_ground_truth_correctly_for_every_primitive(judged):
  cfg, clips, renders, more, more_r = judged
  assert renders.names[-1] == J.STILL and len(set(renders.labels[0, 0])) == len(renders.names)   # distinct labels
  assert (renders.commanded >= 0).all()
  for c, r in ((clips, renders), (more, more_r)):
    for metric in ("psnr", "ssim"):
      pred, best = J.judge(c.frames, r, metric)
      np.testing.assert_array_equal(pred, c.actions[:, 1:])
      np.testing.assert_array_equal(best, r.commanded)
  prim = J.per_primitive(J.judge(clips.frames, renders)[0] == clips.actions[:, 1:], renders)
  assert prim == {n: 100.0 for n in D.PRIMITIVES}
  m = E.step_metrics(clips.frames, clips, renders)
  pt = E.per_trajectory(m, clips.actions.shape[1])
  assert pt["exact"][0] == 100.0 and pt["fine"][0] == 100.0 and pt["psnr"][0] >= 99 and pt["ssim"][0] == pytest.approx(1.0)
  assert pt["detail"][0] == pytest.approx(1.0)


def test_render_judge_does_not_credit_a_frozen_video(judged):
  cfg, clips, renders, more, more_r = judged
  for c, r in ((clips, renders), (more, more_r)):
    frozen = np.repeat(c.frames[:, :1], c.frames.shape[1], axis=1)
    pred, best = J.judge(frozen, r)
    assert (best[:, 0] == len(r.names) - 1).all()                 # step 1 reads as the standstill
  # (the every-primitive clip returns to its start pose after every second step, where a
  # frozen frame is the right answer; random trajectories do not)
  assert (pred == more.actions[:, 1:]).mean() < 0.2
  shifted = np.concatenate([clips.frames[:, :1], clips.frames[:, :-1]], axis=1)   # one step late
  assert (J.judge(shifted, renders)[0] == clips.actions[:, 1:]).mean() < 0.3
  with pytest.raises(ValueError, match="judge: frames must be"):
    J.judge(clips.frames[:, :1], renders)
  pred, _ = J.judge(clips.frames[:, :4], renders)                            # a prefix: its 3 steps
  np.testing.assert_array_equal(pred, clips.actions[:, 1:4])
  with pytest.raises(ValueError, match="metric must be"):
    J.judge(clips.frames, renders, "mse")


def test_chained_judge_forgives_one_wrong_step(judged):
  """A video that stands still at step 1 and then makes every commanded motion from where it is:
  the chained judge fails step 1 only; the commanded-pose judge also fails most later steps
  (their content is offset from every candidate). Ground truth reads the same under both."""
  cfg, clips, renders, more, more_r = judged
  for metric in ("psnr", "ssim"):
    pred, best = J.judge_chained(more.frames, more, cfg, metric=metric)
    np.testing.assert_array_equal(pred, more.actions[:, 1:])
    np.testing.assert_array_equal(best, more_r.commanded)
  c2w = np.linalg.inv(np.asarray(more.w2c, np.float64))
  late = np.empty_like(more.frames)
  for i in range(len(more.frames)):
    poses = [c2w[i, 0], c2w[i, 0]]                                          # step 1: no motion
    for k in range(2, c2w.shape[1]):
      poses.append(poses[-1] @ np.linalg.inv(c2w[i, k - 1]) @ c2w[i, k])    # then the commanded motion
    late[i] = D.render_poses(D.scene(int(more.scenes[i]), cfg), np.stack(poses), cfg)
  chained = J.judge_chained(late, more, cfg)[0] == more.actions[:, 1:]
  absolute = J.judge(late, more_r)[0] == more.actions[:, 1:]
  assert not chained[:, 0].any() and chained[:, 1:].all()
  assert absolute[:, 1:].mean() < 0.5
  m = E.step_metrics(late, more, more_r, world=cfg)
  np.testing.assert_array_equal(m["step_exact"], chained.astype(np.float32))
  pt = E.per_trajectory(m, more.actions.shape[1])
  np.testing.assert_allclose(pt["step_exact"], 100.0 * chained.mean(1))
  short = E.step_metrics(late, more, more_r, world=cfg, chained_steps=2)      # the first 2 steps only
  np.testing.assert_array_equal(short["step_exact"], chained[:, :2].astype(np.float32))
  assert "step_exact" in E.per_trajectory(short, 3) and "step_exact" not in E.per_trajectory(short, 4)
  with pytest.raises(ValueError, match="judge_chained: frames must be"):
    J.judge_chained(more.frames[:, :, :8], more, cfg)
  with pytest.raises(ValueError, match=r"judge_chained: steps must be in \[1, 5\], got 6"):
    J.judge_chained(more.frames, more, cfg, steps=6)
  with pytest.raises(ValueError, match="metric must be"):
    J.judge_chained(more.frames, more, cfg, metric="mse")


def test_ssim_and_psnr_known_values():
  rng = np.random.default_rng(0)
  a = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
  assert J.ssim(a, a) == pytest.approx([1.0, 1.0], abs=1e-6)
  assert (J.ssim(a, 1 - a) < 0).all() and (J.ssim(a, rng.uniform(size=a.shape)) < 0.2).all()
  np.testing.assert_allclose(J.psnr(a, a + 0.1), 20.0, atol=1e-4)       # MSE 0.01


def test_paired_bootstrap_known_cases():
  rng = np.random.default_rng(0)
  before = rng.normal(50, 20, (1, 400))
  m, lo, hi = S.paired_bootstrap(before + 3.0, before)
  assert (m, lo, hi) == pytest.approx((3.0, 3.0, 3.0))                     # paired: the spread cancels
  d = rng.normal(2.0, 10.0, 400)
  m, lo, hi = S.paired_bootstrap(before[0] + d, before[0], n_boot=4000)
  half = 1.96 * d.std() / np.sqrt(400)
  assert m == pytest.approx(d.mean()) and lo == pytest.approx(m - half, abs=0.2 * half)
  assert hi == pytest.approx(m + half, abs=0.2 * half)
  # runs resampled too: three runs with offsets 0, 2, 4 on top of tiny noise -> CI spans the run spread
  runs = np.stack([before[0] + o + rng.normal(0, 0.01, 400) for o in (0.0, 2.0, 4.0)])
  m, lo, hi = S.paired_bootstrap(runs, before)
  assert m == pytest.approx(2.0, abs=0.01) and lo < 1.0 and hi > 3.0
  with pytest.raises(ValueError, match="same N"):
    S.paired_bootstrap(np.zeros((2, 5)), np.zeros((2, 6)))


def test_headroom_numbers():
  acc = np.array([[0.0, 100.0], [50.0, 0.0], [100.0, 50.0]])               # [G=3, N=2]
  h = S.headroom(acc, acc)
  assert h["best_by_reward"] == h["oracle"] == 100.0 and h["worst_by_reward"] == 0.0
  assert h["mean"] == pytest.approx(50.0) and h["within_corr"] == pytest.approx(1.0)
  assert S.headroom(-acc, acc)["best_by_reward"] == 0.0
  # a reward that only tells trajectories apart: high pooled, zero within-group correlation
  acc2 = np.array([[10.0, 80.0], [30.0, 80.0], [20.0, 100.0], [20.0, 60.0]])
  rew = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]) + np.array([[0.0], [0.0], [0.0], [0.0]])
  h2 = S.headroom(rew + 1e-9 * np.arange(8).reshape(4, 2), acc2)
  assert h2["pooled_corr"] > 0.9 and abs(h2["within_corr"]) < 0.5
  with pytest.raises(ValueError, match="headroom"):
    S.headroom(acc[:1], acc[:1])


def test_shuffled_rewards_are_a_permutation_within_each_group():
  rng = np.random.default_rng(1)
  r = {"idm": jnp.asarray(rng.normal(size=(5, 12)), jnp.float32), "drift": jnp.asarray(rng.normal(size=(5, 12)), jnp.float32)}
  out = shuffle_within_groups(r, jax.random.key(3))
  moved = 0
  for p in range(5):
    a, b = np.asarray(r["idm"][p]), np.asarray(out["idm"][p])
    np.testing.assert_array_equal(np.sort(a), np.sort(b))
    perm = np.array([int(np.nonzero(a == x)[0][0]) for x in b])
    np.testing.assert_array_equal(np.asarray(out["drift"][p]), np.asarray(r["drift"][p])[perm])   # one permutation
    moved += int((perm != np.arange(12)).sum())
  assert moved > 30
  again = shuffle_within_groups(r, jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(again["idm"]), np.asarray(out["idm"]))
  with pytest.raises(ValueError, match="share one"):
    shuffle_within_groups({"a": jnp.zeros((2, 3)), "b": jnp.zeros((2, 4))}, jax.random.key(0))

  class Stage:
    weights = {"idm": 2.0}

    def __call__(self, *a):
      return {"idm": jnp.arange(6.0)}, "frames"

  st = R.ShuffledRewardStage(Stage(), seed=0)
  got = [np.asarray(st(None, None)[0]["idm"]) for _ in range(3)]
  assert st.weights == {"idm": 2.0} and all(sorted(g) == list(range(6)) for g in got)
  assert not all((g == got[0]).all() for g in got[1:])                     # a fresh permutation per call


def test_lowpass_latent_is_exact_on_its_world():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 3, 8, 8, 3)).astype(np.float32)
  lat = PatchLatent(4, keep=2).fitted(x, scale="global")
  assert lat.channels == 12 and lat.encode(x).shape == (2, 12, 3, 2, 2)
  lp = lat.lowpass(x)
  np.testing.assert_allclose(lat.decode(lat.encode(lp), clip=False), lp, atol=1e-5)
  np.testing.assert_allclose(lat.lowpass(lp), lp, atol=1e-5)                 # a projection
  assert np.abs(lp - x).mean() > 0.05                                        # and a lossy one
  assert PatchLatent.from_dict(lat.to_dict()) == lat
  np.testing.assert_array_equal(PatchLatent(4).lowpass(x), x)
  with pytest.raises(ValueError, match="keep must be in"):
    PatchLatent(4, keep=5)
  cfg = small_world(lowpass=2)
  frames = D.make_clips(1, 2, [3], 0, cfg).frames
  err = np.abs(PatchLatent(4, keep=2).lowpass(frames) - frames)            # the world is low-passed
  assert err.mean() < 1e-3 and err.max() < 0.05                              # (up to clipping to [0, 1])


def test_corrupt_poses_rolls_labels_and_poses_together():
  seen = {}

  def fake_apply(params, name, hs, timestep, text, *, action, viewmats, **kw):
    seen["action"], seen["w2c"] = action, viewmats
    return jnp.zeros(hs.shape[:1] + (hs.shape[1] - 49,) + hs.shape[2:])

  class M:
    chunk_latents = 4

  b, t = 32, 12
  rng = np.random.default_rng(0)
  actions = jnp.asarray(np.repeat(np.arange(1, b + 1)[:, None], t, 1), jnp.float32)    # another clip's always differ
  w2c = jnp.asarray(rng.normal(size=(b, t, 4, 4)), jnp.float32)
  x0 = jnp.zeros((b, 48, t, 2, 2))
  batch = (x0, B.build_cond(x0[:, :, 0], t), actions, w2c, None, {})
  for poses in (False, True):
    B.make_loss(fake_apply, M, shift=3.0, clean_context_prob=0.0, context_timestep=14.0, label_noise=0.5,
                corrupt_poses=poses)(None, batch, jax.random.key(1))
    wrong = (np.asarray(seen["action"]) != np.asarray(actions))                          # [B, T]
    moved = (np.asarray(seen["w2c"]) != np.asarray(w2c)).any((2, 3))
    assert 0.3 < wrong.mean() < 0.7
    np.testing.assert_array_equal(moved, wrong if poses else np.zeros_like(wrong))


def test_stages_are_cached(tmp_path, monkeypatch):
  import reproduce as RP
  cfg = load_config("synthetic")
  cfg.world.height = cfg.world.width = 16
  cfg.eval.horizons = (1,)
  clips, renders = RP.stage_eval_set(cfg, tmp_path, 5, 2, 8, log=lambda m: None)
  assert (tmp_path / "eval_e5_n2_l8.npz").exists() and renders.frames.shape[:3] == (2, 7, 11)
  monkeypatch.setattr(J, "candidate_renders", lambda *a, **k: pytest.fail("eval set re-rendered"))
  clips2, renders2 = RP.stage_eval_set(cfg, tmp_path, 5, 2, 8, log=lambda m: None)
  np.testing.assert_array_equal(clips2.frames, clips.frames)
  np.testing.assert_array_equal(renders2.frames, renders.frames)
  assert renders2.names == renders.names

  calls = []
  monkeypatch.setattr(RP, "params_of", lambda cfg, ckpt: (None, None))
  monkeypatch.setattr(E, "rollout", lambda *a, **k: calls.append(1) or clips.frames)
  m = RP.stage_evaluate("base", cfg, tmp_path, "unused", None, clips, renders, None, 5, log=lambda m: None)
  m2 = RP.stage_evaluate("base", cfg, tmp_path, "unused", None, clips, renders, None, 5, log=lambda m: None)
  assert calls == [1] and m2["exact"].mean() == 1.0
  np.testing.assert_array_equal(m2["psnr"], m["psnr"])
  # finished RL / SFT runs are not redone: their done.json is the cache
  (tmp_path / "rl_seed3").mkdir()
  (tmp_path / "rl_seed3" / "done.json").write_text(json.dumps({"seconds": 12.5}))
  r = RP.stage_rl(cfg, tmp_path, {"model": "x", "latent": None}, None, 0, 3, log=lambda m: None)
  assert r == {"model": tmp_path / "rl_seed3" / "final", "seconds": 12.5}
  assert RP.run_name("shuffled", 1, 2) == "base1_shuffled_seed2" and RP.run_name("rl", 0, 2) == "rl_seed2"
  assert RP.run_name("sft_corrupt", 0, 1, "corrupt0.5_") == "corrupt0.5_sft_corrupt_seed1"
  with pytest.raises(SystemExit, match="seeds must be"):
    RP._seeds("0,x")


def test_committed_base_is_used_only_for_its_config(tmp_path, monkeypatch):
  import reproduce as RP
  cfg = load_config("synthetic")
  src = tmp_path / "trained" / "base"                  # a workdir's trained base, committed by commit_base
  (src / "model").mkdir(parents=True)
  (src / "model" / "wc_jax.json").write_text("{}")
  (src / "latent.json").write_text(json.dumps(PatchLatent(4).to_dict()))
  (src / "base_metrics.jsonl").write_text("{}\n")
  monkeypatch.setattr(RP, "ASSETS", tmp_path / "assets")
  monkeypatch.setattr(RP, "REPO", tmp_path)
  asset = RP.commit_base(tmp_path / "trained", cfg, 0, "python benchmarks/reproduce.py ...")
  assert asset == tmp_path / "assets" / "synthetic_base_seed0"
  assert json.loads((asset / "study.json").read_text())["command"].startswith("python benchmarks/reproduce.py")
  trained = []
  monkeypatch.setattr(B, "train", lambda c, d, **k: trained.append(d) or pytest.skip("not reached"))
  got = RP.stage_base(cfg, tmp_path / "wd", 0, log=lambda m: None)
  assert got["source"] == "committed" and got["model"] == asset / "model" and not trained
  assert RP.stage_base(RP.quick(load_config("synthetic")), tmp_path / "wd", 0, log=lambda m: None)["source"] == "committed"
  other = load_config("synthetic")
  other.model.hidden_size = 128
  with pytest.raises(pytest.skip.Exception):
    RP.stage_base(other, tmp_path / "wd", 0, log=lambda m: None)
  assert trained == [str(tmp_path / "wd" / "base")]


def test_synthetic_config_variants():
  """configs/synthetic.py:panel / :lowpass change only the world's look, the latent and the base's
  lr (so a committed base of the default world is not taken for theirs); unknown names are errors."""
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "synthetic.py"
  spec = importlib.util.spec_from_file_location("synthetic_variants", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  base, panel, low = mod.get_config(), mod.get_config("panel"), mod.get_config("lowpass")
  assert (panel.world.wall_panel, panel.world.sky_contrast, panel.world.lowpass) == (1.5, 0.5, 0)
  assert (low.world.lowpass, low.model.latent_channels, low.model.out_channels, low.base.lr) == (2, 12, 12, 3e-3)
  assert (base.world.wall_panel, base.world.lowpass, base.model.latent_channels) == (0.0, 0, 48)
  import reproduce as RP
  assert RP.fingerprint(low) != RP.fingerprint(base)
  assert RP.load_config(f"{path}:lowpass").world.lowpass == 2
  assert sum(n for n, _ in B.parse_restarts(low.base.restarts)) == low.base.steps      # the cycles cover the run
  assert RP.quick(RP.load_config(f"{path}:lowpass")).base.restarts == ""
  # every committed base is the :lowpass recipe's, so the study loads it for that variant (not for the default)
  assets = sorted((REPO / "benchmarks" / "assets").glob("synthetic_base_seed*"))
  assert assets[0].name == "synthetic_base_seed0"
  for asset in assets:
    meta = json.loads((asset / "study.json").read_text())
    assert meta["fingerprint"] == RP._jsonable(RP.fingerprint(low)) != RP._jsonable(RP.fingerprint(base)), asset.name
    assert (asset / "model" / "wc_jax.json").exists() and (asset / "latent.json").exists(), asset.name
    assert f"{low.base.steps} steps" in meta["train"] and meta["command"], asset.name   # how it was made, on record
  with pytest.raises(ValueError, match=r"unknown variant 'bogus'; choose from \('panel', 'lowpass'\)"):
    mod.get_config("bogus")


def test_study_arms_set_their_rewards_and_reject_unknown_names():
  """Each arm of `--methods` changes only the reward weights and the RWML options of the config it
  runs; an unknown arm is an error naming the known ones."""
  import reproduce as RP
  cfg = load_config("synthetic")
  base_weights = {k: float(v) for k, v in cfg.rewards.weights.items()}
  seen = {}
  for arm in RP.ARMS:
    c = RP.arm_config(cfg, arm)
    seen[arm] = ({k: float(v) for k, v in c.rewards.weights.items()}, R.rwml_options(c.rewards.rwml))
    assert c.model.to_dict() == cfg.model.to_dict() and c.rl.to_dict() == cfg.rl.to_dict()
  assert seen["wc"][0] == base_weights
  assert seen["swirl_fixed"][0] == seen["swirl_alt"][0] == {"idm": 1.0}
  assert seen["wc+rwml"][0] == {**base_weights, "rwml": 1.0}
  assert seen["rwml"][1]["binarize"] and seen["rwml"][1]["filter_easy"]
  assert not seen["rwml_soft"][1]["binarize"] and not seen["rwml_soft"][1]["filter_easy"]
  assert seen["rwml_soft"][1]["threshold"] == seen["rwml"][1]["threshold"] == float(cfg.rewards.rwml.threshold)
  assert seen["rwml_psnr"][1]["metric"] == "psnr" and not seen["rwml_psnr"][1]["binarize"]
  assert seen["rwml"][1]["metric"] == seen["rwml_soft"][1]["metric"] == "cosine"
  assert cfg.rewards.rwml.binarize is True                      # the caller's config is left alone
  assert RP.parse_methods("wc, rwml_soft,wc") == ["wc", "rwml_soft"]
  with pytest.raises(SystemExit, match="rwml_soft"):
    RP.parse_methods("wc,pose")


def test_skip_picks_the_sft_baselines_and_rejects_unknown_stages(tmp_path):
  """--skip=sft drops both SFT baselines, --skip=sft_corrupt only setting (b)'s corrupted one;
  an unknown stage stops the study before it makes its workdir."""
  import reproduce as RP
  assert RP.sft_stages(set(), 0.5) == [("sft", 0.0), ("sft_corrupt", 0.5)]
  assert RP.sft_stages(set(), 0.0) == [("sft", 0.0)]
  assert RP.sft_stages({"sft_corrupt"}, 0.5) == [("sft", 0.0)]
  assert RP.sft_stages({"sft"}, 0.5) == [] == RP.sft_stages({"sft", "sft_corrupt"}, 0.5)
  wd = tmp_path / "wd"
  with pytest.raises(SystemExit, match=r"--skip takes rl, shuffled, sft, sft_corrupt, best_of; got \['sft_clean'\]"):
    RP.main([f"--workdir={wd}", "--skip=sft_clean"])
  assert not wd.exists()


def test_reproduce_rejects_a_bad_corrupt_before_any_stage(tmp_path):
  """--corrupt outside [0, 1) stops the study before its workdir exists, so no base is loaded
  or trained first (the check once ran after the bases, an hour in)."""
  import reproduce as RP
  for p in ("1", "-0.1"):
    wd = tmp_path / f"wd{p}"
    with pytest.raises(SystemExit, match=rf"reproduce: --corrupt must be in \[0, 1\), got {p}"):
      RP.main([f"--workdir={wd}", f"--corrupt={p}"])
    assert not wd.exists()


def test_per_reward_table_ranks_rewards_by_what_the_judge_sees():
  """headroom.py --per_reward: a reward equal to the judge's accuracy picks the oracle with
  correlation 1; its negative picks the worst; a constant (binarised, all above threshold) reward
  picks the first candidate and has no correlation."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import headroom as H
  rng = np.random.default_rng(0)
  exact = rng.uniform(0, 100, (6, 10))
  table = H.per_reward_table({"exact": exact, "perfect": exact, "inverted": -exact, "constant": np.ones_like(exact)})
  rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:6]] for line in table.splitlines()[2:]}
  oracle, worst, first = exact.max(0).mean(), exact.min(0).mean(), exact[0].mean()
  assert rows["perfect"] == ["1.00", f"{oracle:.1f}", f"{exact.mean():.1f}", f"{oracle:.1f}"]
  assert rows["inverted"][:2] == ["-1.00", f"{worst:.1f}"]
  assert rows["constant"][:2] == ["nan", f"{first:.1f}"]
  assert "exact" not in rows


def test_cached_evaluations_and_runs_belong_to_their_model(tmp_path, monkeypatch):
  """An evaluation cached for one checkpoint is recomputed when the checkpoint's bytes change (a
  workdir reused with another base); a finished RL run of another base stops the study with an
  error naming the run, and leaves the run in place."""
  import reproduce as RP
  cfg = load_config("synthetic")
  cfg.world.height = cfg.world.width = 16
  clips, renders = RP.stage_eval_set(cfg, tmp_path, 5, 2, 8, log=lambda m: None)
  ckpt = tmp_path / "model"
  ckpt.mkdir()
  (ckpt / "params.bin").write_bytes(b"first base")
  calls, logs = [], []
  monkeypatch.setattr(RP, "params_of", lambda cfg, c: (None, None))
  monkeypatch.setattr(E, "rollout", lambda *a, **k: calls.append(1) or clips.frames)
  ev = lambda: RP.stage_evaluate("base", cfg, tmp_path, ckpt, None, clips, renders, None, 5, log=logs.append)
  first = ev()
  assert "model_digest" not in first
  ev()
  assert calls == [1]                                   # same bytes: the cache
  (ckpt / "params.bin").write_bytes(b"other base")
  ev()
  assert calls == [1, 1] and any("another model" in m for m in logs)
  ev()
  assert calls == [1, 1]
  # an RL run finished from the current base is the cache; from another base, an error
  run = tmp_path / "rl_seed0"
  run.mkdir()
  (run / "done.json").write_text(json.dumps({"seconds": 1.0, "base_digest": RP.model_digest(ckpt)}))
  r = RP.stage_rl(cfg, tmp_path, {"model": ckpt, "latent": None}, None, 0, 0, log=lambda m: None)
  assert r == {"model": run / "final", "seconds": 1.0}
  (ckpt / "params.bin").write_bytes(b"a third base")
  with pytest.raises(SystemExit, match=r"rl_seed0 was trained from another base model"):
    RP.stage_rl(cfg, tmp_path, {"model": ckpt, "latent": None}, None, 0, 0, log=lambda m: None)
  assert (run / "done.json").exists()


def test_headroom_corrupt_measures_the_corrupted_start(tmp_path, monkeypatch):
  """headroom.py --corrupt=p takes its candidates from setting (b)'s start (the corrupted base of
  that base seed), not the clean base; a p outside [0, 1) stops it before it makes its workdir."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import headroom as H
  import reproduce as RP
  seen = {}
  clean = {"name": "base_seed1", "model": "clean"}
  monkeypatch.setattr(RP, "stage_base", lambda cfg, wd, b, log: clean)
  monkeypatch.setattr(RP, "stage_corrupted", lambda cfg, wd, base, b, p, log: seen.setdefault(
      "corrupted", (base, b, p)) and {"name": f"{base['name']}_corrupt{p:g}", "model": "corrupted"})
  monkeypatch.setattr(RP, "stage_idms", lambda cfg, wd, log: None)
  monkeypatch.setattr(RP, "stage_eval_set", lambda *a: (None, None))
  exact = np.array([[10.0, 50.0], [30.0, 20.0], [20.0, 80.0]])    # [G, N]
  monkeypatch.setattr(RP, "stage_best_of", lambda cfg, wd, base, b, *a: seen.setdefault("best_of", (base, b))
                      and {"score": exact, "exact": exact})
  hr = H.main([f"--workdir={tmp_path / 'wd'}", "--base_seed=1", "--corrupt=0.5", "--trajectories=2"])
  assert seen["corrupted"] == (clean, 1, 0.5)
  assert seen["best_of"] == ({"name": "base_seed1_corrupt0.5", "model": "corrupted"}, 1)
  assert hr["best_by_reward"] == hr["oracle"] == 55.0 and hr["mean"] == pytest.approx(35.0)
  seen.clear()
  H.main([f"--workdir={tmp_path / 'wd'}", "--base_seed=1", "--trajectories=2"])
  assert "corrupted" not in seen and seen["best_of"] == (clean, 1)
  for p in ("1", "-0.1"):
    with pytest.raises(SystemExit, match=rf"headroom: --corrupt must be in \[0, 1\), got {p}"):
      H.main([f"--workdir={tmp_path / 'other'}", f"--corrupt={p}"])
  assert not (tmp_path / "other").exists()
