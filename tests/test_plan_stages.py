"""plan beyond the WorldPlay DiT (wc_jax/plan/stages.py): the FLOP counter, the reward stage
(HPSv3 at tiny width) and a LingBot-World CFG denoise step (depth 2, toy width), each compiled
for a 4-chip v5p topology and checked against hand counts: FLOPs, and parameter bytes per chip."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config

TOPOLOGY = "v5p:2x2x1"   # 4 chips: all on fsdp


def test_jaxpr_flops_counts_scans_convolutions_and_drops_dead_code():
  from wc_jax.plan.stages import jaxpr_flops

  def f(x, w, img, k):
    y = jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)[0]
    _ = x @ w[0] @ w[1]        # nothing returns it: XLA drops it, so the count must too
    z = jax.lax.conv_general_dilated(img, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y, z

  n = jaxpr_flops(f, jnp.ones((8, 16)), jnp.ones((7, 16, 16)), jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 5)))
  assert n == 7 * 2 * 8 * 16 * 16 + 2 * (2 * 8 * 8 * 5) * (3 * 3 * 3)


def test_hlo_costs_reads_unsigned_trip_counts_and_batch_one_kernels():
  """plan.hlo_costs reads the compiled text as XLA writes it: a loop bounded by a u32 constant
  (XLA's windowed collective-matmul loops) runs its trips, and a splash kernel called per batch
  row ([heads, seq, dim] operands) is counted as batch 1."""
  from wc_jax import plan

  loop = "\n".join([   # a loop of 5 trips whose bound is a u32 constant, as XLA's windowed einsums write it
      "%cond (p: (u32[], f32[4,4])) -> pred[] {", "  %p = (u32[], f32[4,4]) parameter(0)",
      "  %i = u32[] get-tuple-element(%p), index=0", "  %n = u32[] constant(5)",
      "  ROOT %lt = pred[] compare(%i, %n), direction=LT", "}",
      "%body (q: (u32[], f32[4,4])) -> (u32[], f32[4,4]) {", "  %q = (u32[], f32[4,4]) parameter(0)",
      "  %x = f32[4,4] get-tuple-element(%q), index=1",
      "  %d = f32[4,4] dot(%x, %x), lhs_contracting_dims={1}, rhs_contracting_dims={0}",
      "  %j = u32[] get-tuple-element(%q), index=0",
      "  ROOT %t = (u32[], f32[4,4]) tuple(%j, %d)", "}",
      "ENTRY %main (a: (u32[], f32[4,4])) -> (u32[], f32[4,4]) {", "  %a = (u32[], f32[4,4]) parameter(0)",
      "  ROOT %w = (u32[], f32[4,4]) while(%a), condition=%cond, body=%body", "}"])
  costs = plan.hlo_costs(loop)
  assert costs["matmul_flops"] == 5 * 2 * 4 * 4 * 4 and costs["unknown_trip_loops"] == []

  kernel = "\n".join([
      "ENTRY %main (a: f32[2,128,32], b: f32[2,256,32]) -> f32[2,128,32] {",
      "  %a = f32[2,128,32]{2,1,0} parameter(0)", "  %b = f32[2,256,32]{2,1,0} parameter(1)",
      '  ROOT %splash_mha_dq.1 = f32[2,128,32]{2,1,0} custom-call(%a, %b), custom_call_target="tpu_custom_call", '
      "operand_layout_constraints={f32[2,128,32]{2,1,0}, f32[2,256,32]{2,1,0}}, frontend_attributes={x}", "}"])
  # dq kernel: 1.5 x the 4*B*H*S*K*D of a dense QK^T + PV, with B = 1, H = 2, S = 128, K = 256, D = 32
  assert plan.hlo_costs(kernel)["attention_kernel_flops"] == 1.5 * 4 * 1 * 2 * 128 * 256 * 32


@pytest.fixture(scope="module")
def rewards_tiny():
  pytest.importorskip("libtpu")
  from wc_jax.plan import stages as plan_stages
  from wc_jax.models.qwen2vl.hpsv3 import tiny_config
  cfg = load_config("hunyuan8b")
  cfg.sampling.latent_height, cfg.sampling.latent_width = 2, 4     # 32x64 frames
  cfg.rewards.hpsv3.pixels = 3136                                   # -> 56x84 images, 24 patches
  cfg.mesh.update(dict(data=1, fsdp=-1, context=1, tensor=1))
  cfg.rl.group_size = 6                                             # 6 candidates on 4 chips: padded to 8 rows
  cfg.rl.trajectories_per_step = 1
  return plan_stages.plan_rewards(cfg, TOPOLOGY, configs={"hpsv3": tiny_config()}, models=("hpsv3",))


def test_reward_stage_hpsv3_flops_and_memory(rewards_tiny):
  r = rewards_tiny
  m = r["models"]["hpsv3"]
  assert r["candidates"] == 6 and r["rows_after_padding"] == 8 and r["chips"] == 4
  # window frames 3::4 of a 16-frame released window + the first frame: 5 images per candidate
  assert m["input_shapes"] == [[8, 5 * 24, 1176]]
  # the jaxpr count of the unsharded program is the hand count (vision tower, LM, head)
  assert math.isclose(m["analytic_tflop_total"], m["hand_count_tflop_total"], rel_tol=1e-3)
  # compiled per chip vs analytic / chips: 8 rows computed for 6 candidates, split 4 ways
  assert 8 / 6 * 0.8 < m["replication"] < 8 / 6 * 1.5, m["replication"]
  assert m["compiled_per_chip"]["unknown_trip_loops"] == 0
  # parameters: the embedding table (vocab x 64) and the stacked kernels split 4 ways over fsdp
  full = m["params"] * 4
  print(f"\nhpsv3 tiny: {m['param_bytes_per_chip']} parameter bytes per chip of {full}")
  assert full / 4 <= m["param_bytes_per_chip"] <= full / 4 * 1.6
  # arguments = the parameters per chip + each chip's 2 of the 8 rows of pixels, plus XLA's TPU
  # tile padding (minor dims to multiples of 128: 1176 -> 1280 alone is +8.8%)
  rows = 2 * 5 * 24 * 1176 * 4
  assert 1.0 <= m["argument_bytes_per_chip"] / (m["param_bytes_per_chip"] + rows) < 1.15
  tot = r["total"]
  assert tot["fits"] and tot["resident_gib_per_chip"] >= tot["weights_gib_per_chip"]
  from wc_jax.plan import stages as plan_stages
  assert plan_stages.rewards_rows(r).count("\n") == 1   # hpsv3 + total
  assert "rewards on v5p:2x2x1" in plan_stages.rewards_summary(r)


@pytest.fixture(scope="module")
def lingbot_denoise():
  pytest.importorskip("libtpu")
  from wc_jax import plan
  cfg = load_config("lingbot_tiny")       # dim 64, 2 layers, 24 tokens
  return cfg, plan.plan(cfg, TOPOLOGY, path="denoise")


def test_lingbot_cfg_denoise_flops_and_memory(lingbot_denoise):
  from wc_jax import plan
  from wc_jax.plan import stages as plan_stages
  from wc_jax.models.lingbot import dit
  from wc_jax.models.lingbot.config import from_config
  cfg, r = lingbot_denoise
  mcfg = from_config(cfg.model)
  assert r["path"] == "lingbot denoise" and r["tokens"] == 3 * 2 * 4
  # the hand count (2 CFG branches) equals the jaxpr count of the unsharded forward
  apply, state = dit.functional(dit.abstract_model(mcfg))
  inp = plan_stages._lingbot_inputs(cfg, mcfg, 2)
  counted = plan_stages.jaxpr_flops(lambda s, x, y, c, k: apply(s, x, jnp.zeros((2,)), c, y=y, cam=k), state,
                                    inp["x"], inp["y"], inp["context"], inp["cam"])
  hand = plan_stages.lingbot_forward_flops(mcfg, 24, batch=2)
  assert counted == pytest.approx(hand, rel=0.02)
  assert r["analytic_tflop_total"] == pytest.approx(hand / 1e12, rel=1e-3)
  assert 0.5 < r["replication"] < r["chips"]
  # parameters: every leaf's bytes, split 4 ways where an fsdp-mapped axis divides
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(state))
  assert n * 4 / 4 <= r["param_bytes_per_chip"] <= n * 4
  # arguments >= the parameters per chip + the replicated inputs (x, y, t, both prompts' states, camera);
  # at this toy size XLA's TPU tiles pad the minor dims (8 latent columns -> 128) far beyond that
  one = plan_stages._lingbot_inputs(cfg, mcfg, 1)
  inputs = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in one.values())
  inputs += 4 + math.prod(one["context"].shape) * np.dtype(one["context"].dtype).itemsize
  print(f"\nlingbot tiny: {r['argument_bytes_per_chip']} argument bytes per chip, "
        f"{r['param_bytes_per_chip']} + {inputs} counted")
  assert r["argument_bytes_per_chip"] >= r["param_bytes_per_chip"] + inputs
  assert "lingbot denoise on v5p:2x2x1" in plan.summary(r)


def test_lingbot_rejects_an_unknown_path():
  from wc_jax.plan import stages as plan_stages
  from wc_jax.rl.config import ConfigError
  with pytest.raises(ConfigError, match="denoise"):
    plan_stages.plan_lingbot(load_config("lingbot_tiny"), TOPOLOGY, "rollout")
