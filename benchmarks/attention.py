"""Attention forward+backward on CPU: xla vs blockwise, memory and speed per sequence length.

For each T: compiled temp memory (XLA ``memory_analysis``, nothing executed) and the median wall
time of the jitted forward+backward (``value_and_grad`` of the output sum, w.r.t. q, k, v), both
implementations in the same process, so the ratio ``xla / blockwise`` is what to read (the machine
may be shared). Inputs: one row of ``--segments`` equal packed causal segments (1: plain causal, where
blockwise skips only the upper blocks), 8 query heads, 2 KV heads, Dh 64, float32. The smallest T
from which blockwise is at least as fast as xla is what
``jaxalign.ops.attention.AUTO_BLOCKWISE_MIN_LENGTH`` is set from (memory always favours blockwise).

    .venv/bin/python benchmarks/attention.py [--lengths 256 512 1024 2048 4096] [--reps 3]
        [--block-q 512 --block-k 512] [--memory-only 8192] [--segments 1]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.ops._attention_blockwise import blockwise_attention
from jaxalign.ops.attention import AUTO_BLOCKWISE_MIN_LENGTH, attention_mask, xla_attention

H, K, D = 8, 2, 64


def _ids(t, segments):
    seg = (jnp.arange(t) * segments // t + 1).astype(jnp.int32)[None]
    return seg, jnp.arange(t, dtype=jnp.int32)[None]


def loss_fns(block_q, block_k):
    def xla(q, k, v, seg, pos):
        return xla_attention(q, k, v, attention_mask(seg, seg, pos, pos)).sum()

    def blockwise(q, k, v, seg, pos):
        return blockwise_attention(q, k, v, seg, seg, pos, pos, block_q=block_q, block_k=block_k).sum()

    return {"xla": xla, "blockwise": blockwise}


def measure(fn, t, reps, run, segments):
    grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))
    sds = jax.ShapeDtypeStruct
    shapes = (sds((1, t, H, D), jnp.float32), sds((1, t, K, D), jnp.float32), sds((1, t, K, D), jnp.float32),
              sds((1, t), jnp.int32), sds((1, t), jnp.int32))
    compiled = grad.lower(*shapes).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    if not run:
        return temp, float("nan")
    keys = jax.random.split(jax.random.key(t), 3)
    q = jax.random.normal(keys[0], (1, t, H, D))
    k, v = (jax.random.normal(kk, (1, t, K, D)) for kk in keys[1:])
    seg, pos = _ids(t, segments)
    jax.block_until_ready(compiled(q, k, v, seg, pos))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v, seg, pos))
        times.append(time.perf_counter() - start)
    return temp, float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--memory-only", type=int, nargs="*", default=[8192], help="lengths compiled but not run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--segments", type=int, default=1, help="packed segments per row")
    ap.add_argument("--block-q", type=int, default=512)
    ap.add_argument("--block-k", type=int, default=512)
    args = ap.parse_args()
    print(f"backend {jax.default_backend()}, load average {os.getloadavg()[0]:.2f}; B=1 H={H} K={K} Dh={D} float32, "
          f"{args.segments} packed causal segment(s); blocks {args.block_q}x{args.block_k}; "
          f"AUTO_BLOCKWISE_MIN_LENGTH={AUTO_BLOCKWISE_MIN_LENGTH}")
    print(f"{'T':>6} {'xla temp MiB':>13} {'bw temp MiB':>12} {'mem x':>7} {'xla s':>8} {'bw s':>8} "
          f"{'xla/bw time':>12}")
    fns = loss_fns(args.block_q, args.block_k)
    ratios = {}
    for t in sorted(args.lengths) + sorted(args.memory_only):
        run = t not in args.memory_only or t in args.lengths
        (mx, tx), (mb, tb) = (measure(fns[n], t, args.reps, run, args.segments) for n in ("xla", "blockwise"))
        ratio = tx / tb
        if run:
            ratios[t] = ratio
        print(f"{t:>6} {mx / 2**20:>13.1f} {mb / 2**20:>12.1f} {mx / max(mb, 1):>7.1f} {tx:>8.4f} {tb:>8.4f} "
              f"{ratio:>12.2f}", flush=True)
    lengths = sorted(ratios)
    from_here = [t for i, t in enumerate(lengths) if all(ratios[u] >= 1.0 for u in lengths[i:])]
    print(f"load average {os.getloadavg()[0]:.2f}; blockwise at least as fast as xla from T = "
          f"{from_here[0] if from_here else None} on (of the lengths run)")


if __name__ == "__main__":
    main()
