"""Compiled temp memory of the chunked log-prob / distillation ops vs the naive full-logits versions.

Nothing is allocated: every function is lowered from ``jax.ShapeDtypeStruct``
inputs and compiled for one device, and XLA's ``memory_analysis()`` reports the
temporary buffer size. Run with a single device (XLA_FLAGS unset):

    .venv/bin/python benchmarks/logprob_memory.py [--vocab 49152 151936] [--chunk-sizes 128 256]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from jaxalign.ops import token_distill_loss, token_logprobs


def _full_logits(hidden, head):
    return jnp.einsum("btd,dv->btv", hidden, head, preferred_element_type=jnp.float32)


def naive_token_logprobs(hidden, head, targets):
    logp = jax.nn.log_softmax(_full_logits(hidden, head), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def naive_distill_per_token(hs, ws, ht, wt):
    s = _full_logits(hs, ws)
    t = jax.lax.stop_gradient(_full_logits(ht, wt))
    logq, logp = jax.nn.log_softmax(s), jax.nn.log_softmax(t)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1), (s, t)


def naive_distill_loss(hs, ws, ht, wt, mask):
    per, _ = naive_distill_per_token(hs, ws, ht, wt)
    return jnp.sum(per * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def naive_distill_loss_with_logits(hs, ws, ht, wt, mask):
    """Forward-only naive baseline that keeps its logits.

    XLA:CPU fuses the naive forward KL (matmul, log-softmax, sum) into one loop
    fusion that recomputes the matmul per element and so reports ~0 temp
    memory; GPU/TPU materialise a matmul's output. Returning the logits forces
    them to exist, and ``measure`` counts them (output bytes) as the naive cost.
    """
    per, logits = naive_distill_per_token(hs, ws, ht, wt)
    return jnp.sum(per * mask) / jnp.maximum(jnp.sum(mask), 1.0), logits


def temp_bytes(fn, *args, count_outputs: bool = False) -> int:
    """Temp memory of ``fn`` compiled for one device (nothing is executed); optionally plus its outputs."""
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    return stats.temp_size_in_bytes + (stats.output_size_in_bytes if count_outputs else 0)


def logprob_fns(chunk_size):
    naive = lambda h, w, t: naive_token_logprobs(h, w, t).sum()  # noqa: E731
    chunked = lambda h, w, t: token_logprobs(h, w, t, chunk_size=chunk_size).sum()  # noqa: E731
    return naive, chunked


def distill_fns(chunk_size):
    naive = naive_distill_loss
    chunked = lambda hs, ws, ht, wt, m: token_distill_loss(hs, ws, ht, wt, m, chunk_size=chunk_size)  # noqa: E731
    return naive, chunked


def measure(op: str, batch: int, seq: int, hidden: int, vocab: int, chunk_size: int, dtype=jnp.float32):
    """``{(mode, impl): temp bytes}`` for mode in fwd / fwd+bwd, impl in naive / chunked."""
    sds = jax.ShapeDtypeStruct
    h = sds((batch, seq, hidden), dtype)
    w = sds((hidden, vocab), dtype)
    if op == "token_logprobs":
        args = (h, w, sds((batch, seq), jnp.int32))
        naive, chunked = logprob_fns(chunk_size)
    else:
        args = (h, w, h, w, sds((batch, seq), jnp.float32))
        naive, chunked = distill_fns(chunk_size)
    out = {}
    for impl, fn in (("naive", naive), ("chunked", chunked)):
        if op == "token_distill_loss" and impl == "naive":
            out[("fwd", impl)] = temp_bytes(naive_distill_loss_with_logits, *args, count_outputs=True)
        else:
            out[("fwd", impl)] = temp_bytes(fn, *args)
        out[("fwd+bwd", impl)] = temp_bytes(jax.value_and_grad(fn, argnums=(0, 1)), *args)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[49152, 151936])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="hidden and head dtype")
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)

    mib = 2**20
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; batch {args.batch}, seq {args.seq}, "
        f"hidden {args.hidden}, {args.dtype} inputs; temp memory of the compiled function (MiB)"
    )
    header = f"{'op':<20}{'vocab':>8}{'chunk':>7}  {'mode':<8}{'naive':>10}{'chunked':>10}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for op in ("token_logprobs", "token_distill_loss"):
        for vocab in args.vocab:
            for chunk in args.chunk_sizes:
                res = measure(op, args.batch, args.seq, args.hidden, vocab, chunk, dtype)
                for mode in ("fwd", "fwd+bwd"):
                    n, c = res[(mode, "naive")], res[(mode, "chunked")]
                    print(f"{op:<20}{vocab:>8}{chunk:>7}  {mode:<8}{n / mib:>10.0f}{c / mib:>10.0f}{c / n:>8.3f}")


if __name__ == "__main__":
    main()
