"""One AR chunk engine for every caller: generation, the RL clip rollout and the evaluation
produce the same latents from the same inputs and noise, and the engine compiles once."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from wc_jax import generate
from wc_jax.inference import RETRIEVAL_POINTS, ChunkEngine
from wc_jax.models.worldplay.config import from_config
from wc_jax.models.worldplay.model import functional
from wc_jax.rl.rollout import ClipRolloutEngine, TrainingExample
from wc_jax.world import evaluate

# Rows of one batched program vs. a batch-1 program: XLA:CPU may block the same fp32 matmuls
# differently for another batch size, so results agree to rounding (measured ~1e-7 here),
# not bit for bit. Programs of the same shapes on the same inputs are compared bit-exact.
BATCH_ATOL = 1e-5


def tiny_config():
  cfg = load_config("tiny")
  cfg.sampling.chunks = 3
  cfg.sampling.steps = 2
  return cfg


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  cfg = tiny_config()
  out_dir = tmp_path_factory.mktemp("gen")
  summary = generate.run(cfg, str(out_dir))   # generate's own path, end to end
  mcfg = from_config(cfg.model)
  model = generate.build_model(cfg, mcfg)
  apply, state = functional(model)
  inputs = generate.make_inputs(cfg, mcfg)
  text = generate.encode_conditioning(model, inputs["conditioning"])
  return dict(cfg=cfg, mcfg=mcfg, apply=apply, state=state, inputs=inputs, text=text, summary=summary,
              latents=np.load(out_dir / "latents.npz")["latents"])


def rl_engine(setup):
  cfg, mcfg = setup["cfg"], setup["mcfg"]
  return ClipRolloutEngine(setup["apply"], chunk=mcfg.chunk_latents, steps=cfg.sampling.steps,
                           shift=cfg.sampling.shift, memory_frames=cfg.sampling.max_context_frames,
                           recent=cfg.sampling.recent_context_frames, context_timestep=mcfg.context_timestep)


def test_generate_rl_and_evaluate_produce_the_same_latents(setup):
  inp, state, text, want = setup["inputs"], setup["state"], setup["text"], setup["latents"]
  w2c, a, ks, noise = inp["w2c"][None], inp["actions"][None], inp["Ks"], inp["latents"]
  chunk = setup["mcfg"].chunk_latents

  # generate's path: generate.run == its engine on generate's inputs (bit-exact)
  eng = generate.make_engine(setup["apply"], setup["cfg"], setup["mcfg"])
  assert eng.retrieval_points == RETRIEVAL_POINTS == 50000
  gen = eng.generate(state, latents=noise, cond=inp["cond"], viewmats=w2c, Ks=ks, action=a, text=text)
  np.testing.assert_array_equal(np.asarray(gen.latents), want)
  assert gen.model_passes == setup["summary"]["model_passes"] == 1 + 2 + 3 * 2

  # the RL clip rollout of clip 3 from generate's noise: the prefix is generate's first two
  # chunks, a candidate whose noise is generate's third chunk is generate's third chunk
  rl = rl_engine(setup)
  other = np.asarray(jax.random.normal(jax.random.key(7), (2, 4, chunk, 4, 6)))
  for cand in (noise[:, :, 8:12], np.concatenate([noise[:, :, 8:12], other])):
    r = rl.clip_candidates(state, clip=3, prefix_noise=noise[:, :, :8], candidate_noise=cand, cond=inp["cond"],
                           viewmats=w2c, Ks=ks, action=a, text=text)
    np.testing.assert_array_equal(np.asarray(r.prefix), want[:, :, :8])
    assert r.context_indices == gen.context_indices[2] == list(range(8))
    if len(cand) == 1:   # the same batch-1 programs: bit-exact
      np.testing.assert_array_equal(np.asarray(r.x0[0]), want[0, :, 8:12])
    else:                # candidate 0 of a batch of 3 against the shared batch-1 caches
      np.testing.assert_allclose(np.asarray(r.x0[0]), want[0, :, 8:12], atol=BATCH_ATOL, rtol=0)
      assert np.abs(np.asarray(r.x0[1]) - want[0, :, 8:12]).max() > 1e-3

  # the RL entry point (key -> noise) is clip_candidates on the key's noise (bit-exact)
  traj = TrainingExample(None, None, None, None, None, first_latent=inp["first_latent"][0], actions=inp["actions"],
                    w2c=inp["w2c"], Ks=ks[0])
  key = jax.random.key(3)
  ro = rl.rollout(state, text, traj, 3, 2, key)
  kp, kc = jax.random.split(key)
  r = rl.clip_candidates(state, clip=3, prefix_noise=jax.random.normal(kp, (1, 4, 12, 4, 6))[:, :, :8],
                         candidate_noise=jax.random.normal(kc, (2, 4, chunk, 4, 6)), cond=inp["cond"], viewmats=w2c,
                         Ks=ks, action=a, text=text)
  np.testing.assert_array_equal(np.asarray(ro.x0), np.asarray(r.x0))
  assert ro.dit_calls == r.model_passes == 1 + 2 + 3 + 3 and ro.chunk_generations == 2 + 2
  np.testing.assert_array_equal(np.asarray(ro.cond), np.asarray(inp["cond"][:, :, 8:12]))

  # world/evaluate's path (batched clips, shared text cache, retrieval on row 0's poses)
  ev = evaluate.engine_for(setup["apply"], setup["cfg"])
  assert ev is evaluate.engine_for(setup["apply"], setup["cfg"])          # built once per model and settings
  tc = ev.encode_text(state, text)
  first = inp["first_latent"]
  one = evaluate.generate_latents(ev, state, tc, first, a, w2c, ks, noise)
  np.testing.assert_array_equal(np.asarray(one), want)
  two = evaluate.generate_latents(ev, state, tc, np.concatenate([first, first]), np.concatenate([a, a]),
                                  np.concatenate([w2c, w2c]), np.concatenate([ks, ks]),
                                  np.concatenate([noise, np.asarray(jax.random.normal(jax.random.key(1), noise.shape))]))
  np.testing.assert_allclose(np.asarray(two[:1]), want, atol=BATCH_ATOL, rtol=0)


def test_the_engine_compiles_its_programs_once(setup):
  inp, state, text = setup["inputs"], setup["state"], setup["text"]
  eng = generate.make_engine(setup["apply"], setup["cfg"], setup["mcfg"])
  kw = dict(cond=inp["cond"], viewmats=inp["w2c"][None], Ks=inp["Ks"], action=inp["actions"][None])
  eng.generate(state, latents=inp["latents"], text=text, **kw)
  first = dict(eng.traces)
  assert first == {"text": 1, "context": 1, "denoise": 2}   # denoise: chunk 0 (no context) + chunks >= 1
  eng.generate(state, latents=inp["latents"] + 1.0, text=text, **kw)
  assert dict(eng.traces) == first

  rl = rl_engine(setup)
  traj = TrainingExample(None, None, None, None, None, first_latent=inp["first_latent"][0], actions=inp["actions"],
                    w2c=inp["w2c"], Ks=inp["Ks"][0])
  rl.rollout(state, text, traj, 3, 2, jax.random.key(0))
  first = dict(rl.traces)
  assert first == {"text": 1, "context": 1, "denoise": 3}   # batch-1 prefix (with/without context), batch-G
  rl.rollout(state, text, traj, 3, 2, jax.random.key(1))
  rl.rollout(state, text, traj, 2, 2, jax.random.key(2))     # another clip index: contexts padded, same programs
  assert dict(rl.traces) == first


def test_engine_rejects_bad_calls(setup):
  eng = ChunkEngine(setup["apply"], chunk=4, steps=1, shift=5.0, retrieval_points=100)
  assert eng.points_local.shape == (100, 3)
  inp = setup["inputs"]
  with pytest.raises(ValueError, match="exactly one of text"):
    eng.generate(setup["state"], latents=inp["latents"], cond=inp["cond"], viewmats=inp["w2c"][None],
                 Ks=inp["Ks"], action=inp["actions"][None])
  with pytest.raises(ValueError, match="4 chunks of 4 latents need T >= 16"):
    eng.generate(setup["state"], latents=inp["latents"], cond=inp["cond"], viewmats=inp["w2c"][None],
                 Ks=inp["Ks"], action=inp["actions"][None], text=setup["text"], chunks=4)
  with pytest.raises(ValueError, match="needs a prefix of 8 latents"):
    eng.clip_candidates(setup["state"], clip=3, prefix_noise=jnp.zeros((1, 4, 4, 4, 6)),
                        candidate_noise=jnp.zeros((1, 4, 4, 4, 6)), cond=inp["cond"], viewmats=inp["w2c"][None],
                        Ks=inp["Ks"], action=inp["actions"][None], text=setup["text"])
