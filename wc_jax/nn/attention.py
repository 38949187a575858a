"""Attention backends behind one interface and one mask description.

    out = attention(q, k, v, mask, impl=...)      q [B,Lq,H,D], k/v [B,Lk,H,D] -> [B,Lq,H,D]

`Mask` says which keys a query may see:
  * kv_valid [B,Lk] / q_valid [B,Lq] (arrays): padding. A query with no visible key
    returns 0 (the reference's SDPA does the same for fully masked rows).
  * q_chunk [Lq] / kv_chunk [Lk] (static numpy int arrays): chunk-causal structure,
    key j is visible to query i iff kv_chunk[j] <= q_chunk[i]. Text tokens get chunk -1,
    so text sees text only and every video chunk sees text plus earlier chunks.

Backends:
  * "xla"       dense softmax in float32 (CPU, tests, the reference's numerics);
  * "xla_flash" blockwise online softmax over key blocks (pure JAX, O(Lq*block) memory;
                the portable choice for long sequences and TPU AOT planning);
  * "cudnn"     jax.nn.dot_product_attention(implementation="cudnn") on GPU (bf16/fp16);
  * "splash"    Pallas splash attention on TPU (the chunk structure becomes a static mask).

On a mesh, splash (always) and the XLA kernels (when the mesh has a `context` axis) run under
shard_map with the queries split over `context`, batch over the data axes and heads over
`tensor`; every chip holds all keys and values (sequence-parallel attention, all-gather K/V).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

IMPLS = ("xla", "xla_flash", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class Mask:
  kv_valid: jax.Array | None = None
  q_valid: jax.Array | None = None
  q_chunk: np.ndarray | None = None
  kv_chunk: np.ndarray | None = None

  def dense(self, batch: int, lq: int, lk: int) -> jax.Array | None:
    """Boolean [B, 1, Lq, Lk] mask, or None when everything is visible."""
    m = None
    if self.q_chunk is not None:
      m = jnp.asarray(np.asarray(self.kv_chunk)[None, :] <= np.asarray(self.q_chunk)[:, None])[None, None]
    if self.kv_valid is not None:
      kv = self.kv_valid.astype(bool)[:, None, None, :]
      m = kv if m is None else m & kv
    if self.q_valid is not None:
      qv = self.q_valid.astype(bool)[:, None, :, None]
      m = qv if m is None else m & qv
    if m is None:
      return None
    return jnp.broadcast_to(m, (batch, 1, lq, lk))


def attention(q, k, v, mask: Mask | None = None, *, impl: str = "xla", block_kv: int = 1024):
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"attention expects [B,L,H,D] tensors, got q{q.shape} k{k.shape} v{v.shape}")
  if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"attention shape mismatch: q{q.shape} k{k.shape} v{v.shape}")
  mask = mask or Mask()
  if impl == "xla":
    return _sequence_parallel(_xla, q, k, v, mask)
  if impl == "xla_flash":
    return _sequence_parallel(lambda q, k, v, m: _xla_flash(q, k, v, m, block_kv), q, k, v, mask)
  if impl == "cudnn":
    return _cudnn(q, k, v, mask)
  if impl == "splash":
    return _sharded(_splash, q, k, v, mask)
  raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLS}")


def _context_size(mesh) -> int:
  return int(dict(mesh.shape).get("context", 1)) if mesh is not None else 1


def _sequence_parallel(fn, q, k, v, mask):
  """The XLA kernels: auto-partitioned by XLA, except on a mesh with a `context` axis, where the
  queries are split over it explicitly (`_sharded`), so that no chip attends for all of them."""
  from wc_jax import sharding
  mesh = sharding.current_mesh()
  if _context_size(mesh) > 1 and mask.q_chunk is None:
    return _sharded(fn, q, k, v, mask)
  return fn(q, k, v, mask)


def _sharded(fn, q, k, v, mask):
  """Runs a per-device kernel under jax.shard_map on the current mesh (Mosaic kernels cannot be
  auto-partitioned): batch over the data axes, heads over `tensor`, and the queries over
  `context` (sequence-parallel attention: the keys and values, whole on every chip, are
  all-gathered from their token shards by the shard_map's input layout). A chunk-causal mask
  (static per query position) keeps the queries whole, said once in the log."""
  from wc_jax import sharding
  mesh = sharding.current_mesh()
  if mesh is None:
    return fn(q, k, v, mask)
  seq = "activation_length" if mask.q_chunk is None else None
  if seq is None and _context_size(mesh) > 1:
    sharding.log.warning("attention with a chunk-causal mask runs whole query sequences on each of the %d "
                         "context chips (q %s)", _context_size(mesh), tuple(q.shape))
  q_axes = ("activation_batch", seq, "activation_heads", None)
  k_axes = ("activation_batch", "activation_kv_length", "activation_heads", None)
  qspec = sharding.check_spec(sharding.logical_to_spec(q_axes, mesh=mesh), tuple(q.shape), mesh, q_axes,
                              "attention queries")
  kspec = sharding.check_spec(sharding.logical_to_spec(k_axes, mesh=mesh), tuple(k.shape), mesh, k_axes,
                              "attention keys")
  if (qspec[0], qspec[2]) != (kspec[0], kspec[2]):   # (a batch-1 key side: split neither)
    both = lambda a, b: a if a == b else None
    qspec = P(both(qspec[0], kspec[0]), qspec[1], both(qspec[2], kspec[2]), None)
    kspec = P(qspec[0], kspec[1], qspec[2], None)
  qv = mask.q_valid if mask.q_valid is not None else jnp.ones(q.shape[:2], bool)
  kvv = mask.kv_valid if mask.kv_valid is not None else jnp.ones(k.shape[:2], bool)
  if kvv.shape[0] != k.shape[0]:
    kvv = jnp.broadcast_to(kvv, k.shape[:2])
  if qv.shape[0] != q.shape[0]:
    qv = jnp.broadcast_to(qv, q.shape[:2])

  def local(q, k, v, qv, kvv):
    return fn(q, k, v, Mask(kv_valid=kvv, q_valid=qv, q_chunk=mask.q_chunk, kv_chunk=mask.kv_chunk))

  return jax.shard_map(local, mesh=mesh, in_specs=(qspec, kspec, kspec, P(*qspec[:2]), P(*kspec[:2])),
                       out_specs=qspec, check_vma=False)(q, k, v, qv, kvv)


def _xla(q, k, v, mask):
  b, lq, _, d = q.shape
  lk = k.shape[1]
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32,
                 precision=jax.lax.Precision.HIGHEST) / math.sqrt(d)
  m = mask.dense(b, lq, lk)
  if m is not None:
    s = jnp.where(m, s, -jnp.inf)
  smax = jnp.max(s, axis=-1, keepdims=True)
  smax = jnp.where(jnp.isfinite(smax), smax, 0.0)
  p = jnp.exp(s - smax)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  p = p / jnp.where(denom > 0, denom, 1.0)
  out = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32,
                   precision=jax.lax.Precision.HIGHEST)
  return out.astype(q.dtype)


def _xla_flash(q, k, v, mask, block_kv):
  """Online-softmax over key blocks; never materialises [Lq, Lk]."""
  b, lq, h, d = q.shape
  lk = k.shape[1]
  nblk = max(1, -(-lk // block_kv))
  pad = nblk * block_kv - lk
  kv_valid = mask.kv_valid.astype(bool) if mask.kv_valid is not None else jnp.ones((b, lk), bool)
  kv_chunk = np.asarray(mask.kv_chunk) if mask.kv_chunk is not None else None
  if pad:
    k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
    kv_valid = jnp.pad(kv_valid, ((0, 0), (0, pad)))
    if kv_chunk is not None:
      kv_chunk = np.pad(kv_chunk, (0, pad), constant_values=np.iinfo(np.int32).max)
  kb = k.reshape(b, nblk, block_kv, h, d).swapaxes(0, 1)
  vb = v.reshape(b, nblk, block_kv, h, d).swapaxes(0, 1)
  validb = kv_valid.reshape(b, nblk, block_kv).swapaxes(0, 1)
  q_chunk = jnp.asarray(mask.q_chunk) if mask.q_chunk is not None else None
  chunkb = jnp.asarray(kv_chunk.reshape(nblk, block_kv)) if kv_chunk is not None else jnp.zeros((nblk, block_kv), jnp.int32)
  qf = q.astype(jnp.float32) / math.sqrt(d)

  def step(carry, xs):
    m_i, l_i, acc = carry
    kblk, vblk, valid, chunk = xs
    s = jnp.einsum("bqhd,bkhd->bhqk", qf, kblk.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    allowed = valid[:, None, None, :]
    if q_chunk is not None:
      allowed = allowed & (chunk[None, None, None, :] <= q_chunk[None, None, :, None])
    s = jnp.where(allowed, s, -jnp.inf)
    m_new = jnp.maximum(m_i, jnp.max(s, axis=-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.exp(s - m_safe[..., None])
    corr = jnp.exp(jnp.where(jnp.isfinite(m_i), m_i, 0.0) - m_safe) * jnp.isfinite(m_i)
    l_new = l_i * corr + jnp.sum(p, axis=-1)
    acc = acc * corr[..., None] + jnp.einsum("bhqk,bkhd->bhqd", p, vblk.astype(jnp.float32),
                                             precision=jax.lax.Precision.HIGHEST)
    return (m_new, l_new, acc), None

  init = (jnp.full((b, h, lq), -jnp.inf, jnp.float32), jnp.zeros((b, h, lq), jnp.float32),
          jnp.zeros((b, h, lq, d), jnp.float32))
  (m_i, l_i, acc), _ = jax.lax.scan(step, init, (kb, vb, validb, chunkb))
  out = acc / jnp.where(l_i > 0, l_i, 1.0)[..., None]
  if mask.q_valid is not None:
    out = jnp.where(mask.q_valid.astype(bool)[:, None, :, None], out, 0.0)
  return out.transpose(0, 2, 1, 3).astype(q.dtype)


def _cudnn(q, k, v, mask):
  b, lq, _, _ = q.shape
  m = mask.dense(b, lq, k.shape[1])
  out = jax.nn.dot_product_attention(q, k, v, mask=m, implementation="cudnn")
  if m is not None:  # rows without any visible key are 0, as in the reference
    any_visible = jnp.any(m, axis=-1)[:, 0, :, None, None]
    out = jnp.where(any_visible, out, 0)
  return out


def _splash(q, k, v, mask):
  """Pallas splash attention (TPU). Sequences are padded to a multiple of 128 (padded keys
  masked through segment ids), the chunk structure becomes a static NumpyMask."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  b, lq, h, d = q.shape
  lk = k.shape[1]
  lq_p, lk_p = -(-lq // 128) * 128, -(-lk // 128) * 128
  qv = mask.q_valid.astype(jnp.int32) if mask.q_valid is not None else jnp.ones((b, lq), jnp.int32)
  kvv = mask.kv_valid.astype(jnp.int32) if mask.kv_valid is not None else jnp.ones((b, lk), jnp.int32)
  q = jnp.pad(q, ((0, 0), (0, lq_p - lq), (0, 0), (0, 0)))
  k = jnp.pad(k, ((0, 0), (0, lk_p - lk), (0, 0), (0, 0)))
  v = jnp.pad(v, ((0, 0), (0, lk_p - lk), (0, 0), (0, 0)))
  qv = jnp.pad(qv, ((0, 0), (0, lq_p - lq)))
  kvv = jnp.pad(kvv, ((0, 0), (0, lk_p - lk)))
  if mask.q_chunk is not None:
    qc = np.pad(np.asarray(mask.q_chunk), (0, lq_p - lq), constant_values=np.iinfo(np.int32).max)
    kc = np.pad(np.asarray(mask.kv_chunk), (0, lk_p - lk), constant_values=np.iinfo(np.int32).max)
    dense = kc[None, :] <= qc[:, None]
    dense[lq:, :] = True  # padded query rows: keep them non-empty (they are dropped)
    base = sm.NumpyMask(dense)
  else:
    base = sm.FullMask((lq_p, lk_p))
  multi = sm.MultiHeadMask([base] * h)

  def blk(n):
    return next(x for x in (512, 256, 128) if n % x == 0)

  bq, bk = blk(lq_p), blk(lk_p)
  sizes = sk.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                        block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
  kernel = sk.make_splash_mha(multi, head_shards=1, q_seq_shards=1, block_sizes=sizes)
  scale = 1.0 / math.sqrt(d)

  def one(qb, kb, vb, qseg, kseg):
    # valid tokens share segment 1; padded keys get 0 and padded queries 2, so nobody sees a
    # padded key and a padded query sees nothing (its row is zeroed below).
    seg = sk.SegmentIds(q=jnp.where(qseg > 0, 1, 2), kv=kseg)
    return kernel((qb * scale).swapaxes(0, 1), kb.swapaxes(0, 1), vb.swapaxes(0, 1), segment_ids=seg).swapaxes(0, 1)

  out = jax.vmap(one)(q, k, v, qv, kvv)
  out = jnp.where(qv[:, :, None, None] > 0, out, 0)[:, :lq]
  return out.astype(q.dtype)
