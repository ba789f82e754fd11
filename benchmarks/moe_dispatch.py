"""MoE MLP compute formulations on this machine: every expert on every token (einsum over the expert
axis, `jaxalign.models.layers.moe.moe_mlp`, what the model uses) vs a grouped dispatch (tokens sorted
by expert, `jax.lax.ragged_dot`, k/E of the expert FLOPs). Prints forward+backward milliseconds of
each and their ratio, measured in the same run, for a tiny test shape and a mid-size one.

    .venv/bin/python benchmarks/moe_dispatch.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.models.layers.context import LayerContext
from jaxalign.models.layers.moe import moe_mlp, route


def grouped_moe(p, h, *, top_k: int, normalise: bool):
    """The same mixture by sorting the N*k (token, expert) assignments by expert and running one
    grouped matmul per projection (`ragged_dot`); exact up to summation order."""
    B, T, D = h.shape
    E = p["router"].shape[1]
    x = h.reshape(-1, D)
    _, w, idx = route(x @ p["router"], top_k, normalise)
    expert = idx.reshape(-1)
    order = jnp.argsort(expert, stable=True)
    token = order // top_k
    xs = x[token]
    sizes = jnp.bincount(expert, length=E).astype(jnp.int32)
    gate = jax.lax.ragged_dot(xs, p["expert_gate"], sizes)
    up = jax.lax.ragged_dot(xs, p["expert_up"], sizes)
    y = jax.lax.ragged_dot(jax.nn.silu(gate) * up, p["expert_down"], sizes)
    y = y * w.reshape(-1)[order][:, None]
    return jnp.zeros_like(x).at[token].add(y).reshape(B, T, D)


def params(key, D, F, E):
    ks = jax.random.split(key, 4)
    return {"router": 0.1 * jax.random.normal(ks[0], (D, E)), "expert_gate": 0.1 * jax.random.normal(ks[1], (E, D, F)),
            "expert_up": 0.1 * jax.random.normal(ks[2], (E, D, F)), "expert_down": 0.1 * jax.random.normal(ks[3], (E, F, D))}


def timed(fn, *args, reps: int = 3) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def main():
    for name, (B, T, D, F, E, k) in {"tiny test": (4, 20, 32, 24, 4, 2), "mid": (4, 128, 256, 512, 8, 2)}.items():
        p = params(jax.random.key(0), D, F, E)
        h = jax.random.normal(jax.random.key(1), (B, T, D))
        ctx = LayerContext(jnp.ones((B, T), jnp.int32), jnp.ones((B, T), jnp.int32), None, None, {})
        dense = jax.jit(jax.grad(lambda p, h: jnp.sum(moe_mlp(p, h, ctx, top_k=k, normalise=True)[0] ** 2)))
        grouped = jax.jit(jax.grad(lambda p, h: jnp.sum(grouped_moe(p, h, top_k=k, normalise=True) ** 2)))
        a = np.asarray(moe_mlp(p, h, ctx, top_k=k, normalise=True)[0])
        b = np.asarray(grouped_moe(p, h, top_k=k, normalise=True))
        td, tg = timed(dense, p, h), timed(grouped, p, h)
        print(f"{name} B={B} T={T} D={D} F={F} E={E} k={k}: all-experts einsum {td:.2f} ms, grouped ragged_dot "
              f"{tg:.2f} ms (einsum/grouped {td / tg:.2f}x), max |diff| {np.abs(a - b).max():.1e}")


if __name__ == "__main__":
    main()
