"""Quality rewards, the CLIP aesthetic scorer and its converter, embedding similarity."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from wc_jax.convert.common import ConversionError
from wc_jax.convert.quality import load_scorer, save_scorer, scorer_params
from wc_jax.models.quality import ClipVisionConfig
from wc_jax.models.quality.clip import CLIP_MEAN, CLIP_STD
from wc_jax.rewards import (embedding_similarity_reward, quality_drift_reward, quality_reward,
                            scored_frame_indices)

CFG = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
           image_size=16, patch_size=8, projection_dim=12, layer_norm_eps=1e-5,
           hidden_act="quick_gelu")
# LAION v2 style head: Linear layers at nn.Sequential indices 0, 2, 4 (dropouts between).
HEAD = {"layers.0": (12, 8), "layers.2": (8, 4), "layers.4": (4, 1)}


def _hf_tensors(seed=0):
  """Tiny random CLIPModel-layout tensors (vision tower + a text key to ignore)."""
  rng = np.random.default_rng(seed)
  d, f, p = CFG["hidden_size"], CFG["intermediate_size"], CFG["patch_size"]
  n_pos = (CFG["image_size"] // p) ** 2 + 1
  r = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)
  v = "vision_model."
  t = {v + "embeddings.class_embedding": r(d), v + "embeddings.patch_embedding.weight": r(d, 3, p, p),
       v + "embeddings.position_embedding.weight": r(n_pos, d),
       v + "embeddings.position_ids": np.arange(n_pos)[None].astype(np.int64),
       "visual_projection.weight": r(CFG["projection_dim"], d), "text_model.final_layer_norm.weight": r(4),
       "logit_scale": np.full((), 2.6, np.float32)}
  for ln in ("pre_layrnorm", "post_layernorm"):
    t[f"{v}{ln}.weight"], t[f"{v}{ln}.bias"] = 1 + r(d), r(d)
  for i in range(CFG["num_hidden_layers"]):
    L = f"{v}encoder.layers.{i}."
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      t[L + f"self_attn.{proj}.weight"], t[L + f"self_attn.{proj}.bias"] = r(d, d), r(d)
    for ln in ("layer_norm1", "layer_norm2"):
      t[L + ln + ".weight"], t[L + ln + ".bias"] = 1 + r(d), r(d)
    t[L + "mlp.fc1.weight"], t[L + "mlp.fc1.bias"] = r(f, d), r(f)
    t[L + "mlp.fc2.weight"], t[L + "mlp.fc2.bias"] = r(d, f), r(d)
  head = {}
  for k, (i, o) in HEAD.items():
    head[k + ".weight"], head[k + ".bias"] = r(o, i), r(o)
  return t, head


def _np_reference(t, head, images):
  """Independent numpy transcription of HF CLIPVisionModelWithProjection + the head."""
  v = "vision_model."
  d, p, h = CFG["hidden_size"], CFG["patch_size"], CFG["num_attention_heads"]
  x = (images - np.array(CLIP_MEAN)) / np.array(CLIP_STD)          # NHWC, already image_size
  x = x.transpose(0, 3, 1, 2)                                        # NCHW like torch
  n, _, hh, ww = x.shape
  patches = x.reshape(n, 3, hh // p, p, ww // p, p)
  emb = np.einsum("nciajb,dcab->nijd", patches, t[v + "embeddings.patch_embedding.weight"])
  emb = emb.reshape(n, -1, d)
  cls = np.broadcast_to(t[v + "embeddings.class_embedding"], (n, 1, d))
  x = np.concatenate([cls, emb], 1) + t[v + "embeddings.position_embedding.weight"]

  def ln(y, k):
    mu, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
    return (y - mu) / np.sqrt(var + CFG["layer_norm_eps"]) * t[k + ".weight"] + t[k + ".bias"]

  lin = lambda y, k: y @ t[k + ".weight"].T + t[k + ".bias"]
  x = ln(x, v + "pre_layrnorm")
  for i in range(CFG["num_hidden_layers"]):
    L = f"{v}encoder.layers.{i}."
    y = ln(x, L + "layer_norm1")
    q = lin(y, L + "self_attn.q_proj") * (d // h) ** -0.5
    k, vv = lin(y, L + "self_attn.k_proj"), lin(y, L + "self_attn.v_proj")
    sp = lambda z: z.reshape(n, -1, h, d // h).transpose(0, 2, 1, 3)
    a = sp(q) @ sp(k).transpose(0, 1, 3, 2)
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = (a @ sp(vv)).transpose(0, 2, 1, 3).reshape(n, -1, d)
    x = x + lin(o, L + "self_attn.out_proj")
    y = lin(ln(x, L + "layer_norm2"), L + "mlp.fc1")
    y = y / (1 + np.exp(-1.702 * y))
    x = x + lin(y, L + "mlp.fc2")
  pooled = ln(x[:, 0], v + "post_layernorm")
  e = pooled @ t["visual_projection.weight"].T
  e = e / np.linalg.norm(e, axis=-1, keepdims=True)
  for k in HEAD:
    e = e @ head[k + ".weight"].T + head[k + ".bias"]
  return e[:, 0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  d = tmp_path_factory.mktemp("clip")
  t, head = _hf_tensors()
  save_file(t, str(d / "model.safetensors"))
  with open(d / "config.json", "w") as f:
    json.dump({"model_type": "clip", "projection_dim": CFG["projection_dim"],
               "vision_config": {k: v for k, v in CFG.items() if k != "projection_dim"},
               "text_config": {"hidden_size": 4}}, f)
  (d / "head").mkdir()
  save_file(head, str(d / "head" / "head.safetensors"))
  return d, t, head


@pytest.fixture(scope="module")
def scorer(ckpt):
  d, _, _ = ckpt
  return load_scorer(d, d / "head" / "head.safetensors")


def test_clip_scorer_matches_numpy_reference(ckpt, scorer):
  _, t, head = ckpt
  imgs = np.random.default_rng(1).uniform(size=(3, 16, 16, 3)).astype(np.float32)
  got = jax.jit(lambda x: scorer(x))(imgs)
  np.testing.assert_allclose(np.asarray(got), _np_reference(t, head, imgs.astype(np.float64)),
                             rtol=1e-4, atol=1e-5)


def test_clip_scorer_safetensors_round_trip(ckpt, scorer, tmp_path):
  _, t, head = ckpt
  save_scorer(scorer, tmp_path, head_key_prefixes=["layers.0.", "layers.2.", "layers.4."])
  again = load_scorer(tmp_path)  # head travels inside under aesthetic_head.
  a, b = scorer_params(scorer), scorer_params(again)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  from safetensors.numpy import load_file
  written = load_file(str(tmp_path / "model.safetensors"))
  for k, v in t.items():
    if k.startswith("vision_model.encoder") or k == "visual_projection.weight":
      np.testing.assert_array_equal(written[k], v)
  np.testing.assert_array_equal(written["aesthetic_head.layers.2.weight"], head["layers.2.weight"])


def test_clip_converter_rejects_mismatched_checkpoint(ckpt, tmp_path):
  d, t, head = ckpt
  bad = dict(t)
  del bad["vision_model.post_layernorm.bias"]
  bad["vision_model.encoder.layers.0.mlp.fc1.weight"] = np.zeros((5, 5), np.float32)
  save_file(bad, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text((d / "config.json").read_text())
  with pytest.raises(ConversionError, match=r"missing keys .*post_layernorm.bias[\s\S]*shape mismatches"):
    load_scorer(tmp_path, d / "head" / "head.safetensors")
  save_file(t, str(tmp_path / "model.safetensors"))
  with pytest.raises(ConversionError, match="no aesthetic head"):
    load_scorer(tmp_path)
  wrong_head = {"layers.0.weight": np.zeros((8, 7), np.float32)}
  (tmp_path / "h").mkdir()
  save_file(wrong_head, str(tmp_path / "h" / "h.safetensors"))
  with pytest.raises(ConversionError, match=r"maps 7 -> 8; need 12 \(projection_dim\) -> 1"):
    load_scorer(tmp_path, tmp_path / "h" / "h.safetensors")


def test_clip_config_from_hf_and_validation():
  c = ClipVisionConfig.from_hf({"vision_config": {"hidden_size": 64, "num_attention_heads": 4,
                                                  "intermediate_size": 128, "num_hidden_layers": 1,
                                                  "patch_size": 16},
                                "projection_dim": 32})
  assert (c.hidden_size, c.projection_dim, c.num_positions) == (64, 32, 197)
  with pytest.raises(ValueError, match="must divide by num_attention_heads"):
    ClipVisionConfig(hidden_size=30, num_attention_heads=4)


def test_clip_scorer_resizes_and_rejects_bad_images(scorer):
  imgs = np.random.default_rng(2).uniform(size=(2, 24, 20, 3)).astype(np.float32)
  assert jax.jit(lambda x: scorer(x))(imgs).shape == (2,)
  with pytest.raises(ValueError, match=r"images must be \[N,H,W,3\]"):
    scorer(imgs[..., :2])


def _pixel_scorer(images):
  """A frame's score is its first pixel value."""
  return images[:, 0, 0, 0]


def _frames(values, hw=2):
  v = np.asarray(values, np.float32)
  return np.broadcast_to(v[:, None, None, None], (len(v), hw, hw, 3)).copy()


def test_quality_drift_reward_frames_and_first_frame():
  q = np.arange(17, dtype=np.float32) * 0.1
  frames = _frames(q)
  first = _frames([0.5])[0]
  want = -np.mean(np.abs(q[[3, 7, 11, 15]] - 0.5))
  np.testing.assert_allclose(quality_drift_reward(frames, _pixel_scorer, first), want, rtol=1e-6)
  np.testing.assert_allclose(quality_drift_reward(frames, _pixel_scorer, first_score=0.5), want,
                             rtol=1e-6)
  # first chunk: 13 frames -> 3, 7, 11
  want13 = -np.mean(np.abs(q[[3, 7, 11]] - 0.5))
  np.testing.assert_allclose(quality_drift_reward(frames[:13], _pixel_scorer, first), want13,
                             rtol=1e-6)
  np.testing.assert_allclose(quality_reward(frames, _pixel_scorer), np.mean(q[[3, 7, 11, 15]]),
                             rtol=1e-6)
  assert scored_frame_indices(17) == [3, 7, 11, 15]
  # [N,1] scorer outputs are accepted (the reference takes [:,0])
  col = lambda x: x[:, 0, 0, :1]
  np.testing.assert_allclose(quality_drift_reward(frames, col, first), want, rtol=1e-6)


def test_quality_drift_vmaps_over_candidates():
  q = np.random.default_rng(3).uniform(size=(5, 17)).astype(np.float32)
  frames = np.stack([_frames(x) for x in q])
  first = _frames(q[:, 0])
  got = jax.vmap(lambda f, f0: quality_drift_reward(f, _pixel_scorer, f0))(frames, first)
  want = -np.mean(np.abs(q[:, [3, 7, 11, 15]] - q[:, :1]), axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_quality_drift_with_clip_scorer(scorer):
  frames = np.random.default_rng(4).uniform(size=(17, 16, 16, 3)).astype(np.float32)
  s = np.asarray(jax.jit(lambda x: scorer(x))(np.concatenate([frames[:1], frames[3::4]])))
  got = quality_drift_reward(frames, scorer, frames[0])
  np.testing.assert_allclose(got, -np.mean(np.abs(s[1:] - s[0])), rtol=1e-5, atol=1e-6)


def test_quality_rewards_reject_bad_inputs():
  frames = _frames(np.zeros(17))
  with pytest.raises(ValueError, match="exactly one of first_frame and first_score"):
    quality_drift_reward(frames, _pixel_scorer)
  with pytest.raises(ValueError, match=r"frames must be \[N,H,W,3\] RGB images, got shape \(17, 2, 2\)"):
    quality_drift_reward(frames[..., 0], _pixel_scorer, frames[0])
  with pytest.raises(ValueError, match=r"first_frame must match the frames' \[H,W,3\]"):
    quality_drift_reward(frames, _pixel_scorer, _frames([0.0], hw=3)[0])
  with pytest.raises(ValueError, match=r"scorer must return \[N\] or \[N,1\] scores for N=5"):
    quality_drift_reward(frames, lambda x: x[:, 0, 0], frames[0])
  with pytest.raises(ValueError, match="has no frame at 3::4"):
    quality_reward(frames[:3], _pixel_scorer)
  with pytest.raises(ValueError, match="first_score must be a scalar"):
    quality_drift_reward(frames, _pixel_scorer, first_score=np.zeros(2))


def _mean_pixel_encoder(images):
  """Embedding = per-channel mean + a constant, so similarity is predictable."""
  return jnp.concatenate([jnp.mean(images, axis=(1, 2)), jnp.ones((images.shape[0], 1))], -1)


def test_embedding_similarity_reward(scorer):
  rng = np.random.default_rng(5)
  gen = rng.uniform(size=(8, 4, 4, 3)).astype(np.float32)
  real = rng.uniform(size=(8, 4, 4, 3)).astype(np.float32)
  e = lambda x: np.concatenate([x.mean((1, 2)), np.ones((len(x), 1))], -1)
  cos = lambda a, b: np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  np.testing.assert_allclose(embedding_similarity_reward(gen, real, _mean_pixel_encoder),
                             np.mean(cos(e(gen), e(real))), rtol=1e-5)
  np.testing.assert_allclose(
      embedding_similarity_reward(gen, real, _mean_pixel_encoder, pooling="clip"),
      cos(e(gen).mean(0), e(real).mean(0)), rtol=1e-5)
  np.testing.assert_allclose(
      embedding_similarity_reward(gen, real, _mean_pixel_encoder, stride=4, offset=3),
      np.mean(cos(e(gen[3::4]), e(real[3::4]))), rtol=1e-5)
  assert embedding_similarity_reward(gen, gen, _mean_pixel_encoder, threshold=0.999) == 1.0
  assert embedding_similarity_reward(gen, 1 - gen, _mean_pixel_encoder, threshold=0.9999) == 0.0
  # the CLIP tower as encoder: identical clips are maximally similar
  frames = rng.uniform(size=(4, 16, 16, 3)).astype(np.float32)
  np.testing.assert_allclose(embedding_similarity_reward(frames, frames, scorer.vision), 1.0,
                             rtol=1e-5)


def test_embedding_similarity_rejects_bad_inputs():
  gen = np.zeros((4, 4, 4, 3), np.float32)
  with pytest.raises(ValueError, match=r"generated and real must have the same \[F,H,W,3\] shape"):
    embedding_similarity_reward(gen, gen[:3], _mean_pixel_encoder)
  with pytest.raises(ValueError, match="pooling must be one of"):
    embedding_similarity_reward(gen, gen, _mean_pixel_encoder, pooling="max")
  with pytest.raises(ValueError, match=r"encoder must map \[N,H,W,3\] images to \[N,D\] embeddings"):
    embedding_similarity_reward(gen, gen, lambda x: x[:, 0, 0, 0])
  with pytest.raises(ValueError, match=r"real must be \[N,H,W,3\] RGB images"):
    embedding_similarity_reward(gen, gen[..., 0], _mean_pixel_encoder)
  with pytest.raises(TypeError, match="must be hashable"):
    embedding_similarity_reward(gen, gen, _Unhashable())


class _Unhashable:
  __hash__ = None

  def __call__(self, x):
    return _mean_pixel_encoder(x)


def test_more_bad_inputs(ckpt, tmp_path):
  from wc_jax.convert.quality import build_scorer, head_layout, torch_to_params
  from wc_jax.models.quality import AestheticHeadConfig, ClipAestheticScorer
  from wc_jax.models.quality.clip import ClipVisionTower, preprocess
  gen = np.zeros((4, 4, 4, 3), np.float32)
  with pytest.raises(ValueError, match="need offset >= 0 and stride >= 1, got offset=0 stride=0"):
    embedding_similarity_reward(gen, gen, _mean_pixel_encoder, stride=0)
  with pytest.raises(ValueError, match="4 frames have none at 5::1"):
    embedding_similarity_reward(gen, gen, _mean_pixel_encoder, offset=5)
  with pytest.raises(ValueError, match="image_size 30 must divide by patch_size 8"):
    ClipVisionConfig(image_size=30, patch_size=8)
  with pytest.raises(ValueError, match="hidden_act must be one of"):
    ClipVisionConfig(hidden_act="swish")
  with pytest.raises(ValueError, match="head dims must have >= 2 entries and end in 1"):
    AestheticHeadConfig(dims=(16, 2))
  with pytest.raises(ValueError, match="head activation must be one of"):
    AestheticHeadConfig(activation="tanh")
  with pytest.raises(ValueError, match=r"CLIP preprocess: images must be \[N,H,W,3\]"):
    preprocess(jnp.zeros((2, 8, 8)), 16)
  from flax import nnx
  cfg = ClipVisionConfig(**CFG)
  with pytest.raises(ValueError, match="head input 8 != CLIP projection_dim 12"):
    nnx.eval_shape(lambda: ClipAestheticScorer(cfg, AestheticHeadConfig(dims=(8, 1)),
                                               rngs=nnx.Rngs(0)))
  tower = nnx.eval_shape(lambda: ClipVisionTower(cfg, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"pixels must be \[N,16,16,3\], got shape \(1, 8, 8, 3\)"):
    tower(jnp.zeros((1, 8, 8, 3)))
  shapes = {"a.weight": (4, 12), "b.weight": (1, 5)}
  with pytest.raises(ConversionError, match="b.weight takes 5 inputs but the previous layer gives 4"):
    head_layout(list(shapes), shapes.__getitem__)
  with pytest.raises(ConversionError, match="no 2-D '\\*weight' tensor"):
    head_layout(["a.bias"], lambda k: (4,))
  d, t, head = ckpt
  from wc_jax.convert.common import TensorSource
  mc, params = torch_to_params(TensorSource(d / "model.safetensors"),
                               json.loads((d / "config.json").read_text()),
                               head_source=TensorSource(d / "head" / "head.safetensors"))
  params["head"]["layers"].pop(2)
  with pytest.raises(ConversionError, match="do not match the scorer's structure"):
    build_scorer(mc, params)


def test_clip_scorer_orbax_round_trip_through_load_model(scorer, tmp_path):
  """HF folder -> `python -m wc_jax.convert` Orbax -> load_model, and back to HF, exactly."""
  from safetensors.numpy import load_file
  from wc_jax.convert import __main__ as convert_cli
  from wc_jax.convert import kinds, load_model
  save_scorer(scorer, tmp_path / "hf")
  assert convert_cli.main(["--torch", str(tmp_path / "hf"), "--out", str(tmp_path / "orbax")]) == 0
  for path in (tmp_path / "hf", tmp_path / "orbax"):
    jax.tree.map(np.testing.assert_array_equal, scorer_params(scorer),
                 scorer_params(load_model(kinds.CLIP_AESTHETIC, path)))
  with pytest.raises(ConversionError, match=r"holds a 'clip_aesthetic' checkpoint, not a 'da3' one"):
    load_model(kinds.DA3, tmp_path / "orbax")
  assert convert_cli.main(["--orbax", str(tmp_path / "orbax"), "--to-torch", str(tmp_path / "back")]) == 0
  want, got = load_file(str(tmp_path / "hf" / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
  assert set(want) == set(got)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
