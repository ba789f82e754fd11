"""GPU path check: bf16 vs f32 train steps, fused (cuDNN) vs XLA attention, memory, generation.

    python benchmarks/gpu_check.py [--out results.json]
    python benchmarks/gpu_check.py --issue10 --out benchmarks/results_gpu_h200_issue10.json

``--issue10`` runs only issue 10's accelerator checks (a few minutes on an H200): ``jaxalign.ops.attention``
implementations (xla, blockwise, cudnn) on packed bf16 rows, values and gradients against xla in
float32, and their speed; the SmolLM2-shaped daDPO step at 32 x 512 first in the process, so the
allocator's peak is its own (target: at most 1/4 of the 58.6 GB measured before); and a daDPO step
with a Llama-3.2-1B-shaped student (policy and reference) and a Llama-3.2-3B-shaped teacher in the
step (``benchmarks/shapes/``), bf16 compute, 64 pairs x 1024 tokens, MFU against the H200's dense
bf16 peak of 989 TFLOP/s (target >= 35%).

Runs on one accelerator (it also runs, slowly, on CPU with --small). Random
weights throughout (architecture decides speed, not values): `bench-llama-4x512`
(the issue-4 model) and a SmolLM2-135M-shaped Llama (30 layers, hidden 576,
9/3 heads, vocab 49152, tied). Prints one line per measurement and writes them
all as JSON. Peak memory is the device allocator's ``peak_bytes_in_use``.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "vocab_size": 49152,
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}
RESULTS: list[dict] = []
H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H200 (SXM), the issue's MFU denominator


def record(**kw):
    RESULTS.append(kw)
    print(json.dumps(kw), flush=True)


def bench(fn, *args, reps: int = 5):
    """(first call seconds, median steady seconds) of a jitted fn."""
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return first, float(np.median(times))


def peak_memory_gb() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", 0) / 2**30 if stats else None


def matmul_peak(dtype, n: int) -> float:
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    _, t = bench(f, a, a, reps=10)
    return 2 * n**3 / t / 1e12


def attention(impl: str, B: int, T: int, H: int, D: int):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (B, T, H, D), jnp.bfloat16) for kk in (k1, k2, k3))

    def loss(q, k, v):
        return jnp.sum(jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl).astype(jnp.float32))

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    first, t = bench(f, q, k, v)
    flops = 4 * B * H * T * T * D * 0.5 * 3.5  # causal fwd (2 matmuls) + bwd (~2.5x fwd)
    return t, flops / t / 1e12


def ops_attention_check(B: int, T: int, H: int, K: int, D: int, segments: int = 4):
    """``jaxalign.ops.attention`` per implementation on packed causal bf16 rows: forward+backward time and
    the largest error of output and gradients against impl="xla" run in float32."""
    from jaxalign.ops import attention as attn

    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (B, T, H, D), jnp.float32)
    k, v = (jax.random.normal(kk, (B, T, K, D), jnp.float32) for kk in keys[1:3])
    seg = jnp.broadcast_to((jnp.arange(T) * segments // T + 1).astype(jnp.int32), (B, T))
    seg = seg.at[:, T - T // 16:].set(0)  # padding at the end of each row
    ct = jax.random.normal(keys[3], (B, T, H, D), jnp.float32) * (seg != 0)[..., None, None]

    def grads(impl, dtype):
        def loss(q, k, v):
            out = attn(q.astype(dtype), k.astype(dtype), v.astype(dtype), seg, impl=impl)
            return jnp.sum(out.astype(jnp.float32) * ct)
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

    ref = grads("xla", jnp.float32)(q, k, v)
    for impl in ("xla", "blockwise", "cudnn"):
        try:
            f = grads(impl, jnp.bfloat16)
            _, t = bench(f, q, k, v)
            got = f(q, k, v)
            err = [float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-9)) for a, b in zip(got[1], ref[1])]
            flops = 4 * B * H * T * T * D * 0.5 / segments * 3.5  # causal, packed: per-segment blocks only
            record(what="ops_attention", impl=impl, shape=(B, T, H, K, D), segments=segments, s=round(t, 5),
                   tflops=round(flops / t / 1e12, 1), grad_rel_err_bf16_vs_xla_f32=[round(e, 4) for e in err])
        except Exception as e:  # noqa: BLE001 - a kernel this device cannot run is a result, not a crash
            record(what="ops_attention", impl=impl, shape=(B, T, H, K, D), error=str(e).splitlines()[0][:200])


def shape_config(name: str) -> dict:
    """A config.json under benchmarks/shapes/ (published architectures, no weights)."""
    from pathlib import Path

    return json.loads((Path(__file__).parent / "shapes" / name / "config.json").read_text())


def model_config(hf: dict, **over):
    from jaxalign.models import ModelConfig

    return ModelConfig.from_hf_dict({**hf, **over})


def train_step_figures(name: str, hf: dict, objective: str, dtype: str, B: int, T: int, prompt: int, peak_tflops: float,
                       teacher_hf: dict | None = None, remat: str = "none", attention: str = "auto",
                       grad_accum: int = 1, reps: int = 5):
    """Build policy (+ reference, + teacher) from random weights, time the jitted step."""
    from jaxalign.config.schema import LossConfig, OptimizerConfig
    from jaxalign.models import init_model
    from jaxalign.objectives import ObjectiveContext, get_objective
    from jaxalign.train.optimizer import build_optimizer
    from jaxalign.train.step import GraphDefs, make_loss_fn, make_train_step

    cfg = model_config(hf)
    policy = init_model(cfg, seed=0, dtype=dtype, param_dtype="float32", remat=remat, attention=attention)
    gd, params = nnx.split(policy)
    frozen = {"reference": jax.tree.map(jnp.copy, params)}
    graphs = {"policy": gd, "reference": gd}
    if teacher_hf is not None:
        tgd, tparams = nnx.split(init_model(model_config(teacher_hf), seed=1, dtype=dtype, param_dtype=dtype,
                                            attention=attention))
        frozen["teacher"], graphs["teacher"] = tparams, tgd
    loss_fn = make_loss_fn(get_objective(objective), ObjectiveContext(LossConfig(name=objective)), GraphDefs(**graphs))
    tx, schedule = build_optimizer(OptimizerConfig(lr=1e-6), 100, params)
    dev = jax.devices()[0]
    state = jax.device_put({"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": jax.jit(tx.init)(params),
                            "rng": jax.random.key_data(jax.random.key(0))}, dev)
    step = make_train_step(loss_fn, tx, schedule, grad_accum_steps=grad_accum,
                           state_shardings=jax.tree.map(lambda x: x.sharding, state))
    rng = np.random.default_rng(0)
    batch = {"example_mask": np.ones((B, 1), np.int32)}
    for side in ("chosen", "rejected"):
        batch[f"{side}_input_ids"] = rng.integers(3, cfg.vocab_size, (B, T)).astype(np.int32)
        mask = np.zeros((B, T), np.int32)
        mask[:, prompt:] = 1
        batch[f"{side}_loss_mask"] = mask
        batch[f"{side}_positions"] = np.tile(np.arange(T, dtype=np.int32), (B, 1))
        batch[f"{side}_segment_ids"] = np.ones((B, T), np.int32)
    batch = jax.device_put(batch, dev)
    t = time.perf_counter()
    state, m = step(state, frozen, batch)
    jax.block_until_ready(m["loss"])
    first = time.perf_counter() - t
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        state, m = step(state, frozen, batch)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t)
    sec = float(np.median(times))
    tokens = 2 * B * T
    n_params = sum(x.size for x in jax.tree.leaves(params))
    n_embed = cfg.vocab_size * cfg.hidden_size
    dense = n_params - (n_embed if not cfg.tie_word_embeddings else 0)  # head counted once, input embedding is a gather
    flops = 6 * dense * tokens + 2 * dense * tokens  # policy fwd+bwd + reference fwd
    if teacher_hf is not None:
        tcfg = model_config(teacher_hf)
        t_dense = sum(x.size for x in jax.tree.leaves(frozen["teacher"]))
        t_dense -= tcfg.vocab_size * tcfg.hidden_size if not tcfg.tie_word_embeddings else 0
        flops += 2 * t_dense * tokens
    record(what="train_step", name=name, objective=objective, dtype=dtype, batch=f"{B}x{T}", remat=remat,
           attention=attention, grad_accum=grad_accum, first_s=round(first, 2),
           s_per_step=round(sec, 4), tokens_per_s=round(tokens / sec), model_tflops=round(flops / sec / 1e12, 1),
           mfu_vs_measured_peak=round(flops / sec / 1e12 / peak_tflops, 3),
           mfu_vs_h200_dense_bf16_989=round(flops / sec / H200_BF16_PEAK, 3), compiles=step._cache_size(),
           peak_mem_gb=peak_memory_gb(), loss=float(m["loss"]))


def generation_figures(hf: dict, dtype: str, B: int, new_tokens: int):
    from jaxalign.generation.sampler import SamplingParams, generate_ids
    from jaxalign.models import init_model

    model = init_model(model_config(hf), seed=0, dtype=dtype, param_dtype=dtype)
    prompts = [[1] + list(range(5, 5 + 40 + (i % 7))) for i in range(B)]
    run = lambda: generate_ids(model, prompts, max_new_tokens=new_tokens, sampling=SamplingParams(0.7), seed=0)  # noqa: E731
    t = time.perf_counter()
    out = run()
    first = time.perf_counter() - t
    t = time.perf_counter()
    out = run()
    sec = time.perf_counter() - t
    n = sum(len(o) for o in out)
    record(what="generate", dtype=dtype, batch=B, new_tokens=new_tokens, first_s=round(first, 2), s=round(sec, 3),
           tokens_per_s=round(n / sec), generated=n)


def issue10(small: bool):
    """The accelerator checks of issue 10, in an order that keeps the SmolLM2 step's peak memory its own."""
    smol = dict(SMOLLM2, num_hidden_layers=4) if small else SMOLLM2
    student = dict(smol, num_hidden_layers=smol["num_hidden_layers"] - smol["num_hidden_layers"] // 5)
    B, T = (2, 64) if small else (32, 512)
    train_step_figures("smollm2-daDPO-32x512", student, "dadpo", "bfloat16", B, T, T // 4, float("nan"),
                       teacher_hf=smol, remat="full", reps=3)
    record(what="target", smollm2_daDPO_peak_gb_at_most=round(58.6 / 4, 2))
    ops_attention_check(*((1, 256, 4, 2, 64) if small else (4, 4096, 16, 4, 128)))
    bf16_peak = matmul_peak(jnp.bfloat16, 1024 if small else 8192)
    record(what="matmul_peak_tflops", bf16=round(bf16_peak, 1))
    s1b, s3b = shape_config("llama-3.2-1b"), shape_config("llama-3.2-3b")
    if small:
        s1b, s3b = (dict(x, num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=64, vocab_size=1024) for x in (s1b, s3b))
    B, T = (2, 128) if small else (64, 1024)
    for remat, accum in (("full", 1), ("dots", 2)):
        try:
            train_step_figures(f"llama3.2-1b-student-3b-teacher-{remat}", s1b, "dadpo", "bfloat16", B, T, T // 2,
                               bf16_peak, teacher_hf=s3b, remat=remat, grad_accum=accum, reps=3)
        except Exception as e:  # noqa: BLE001 - out of memory for one variant is a result
            record(what="train_step", name=f"llama3.2-1b-student-3b-teacher-{remat}", error=str(e).splitlines()[0][:300])
    record(what="target", llama_daDPO_mfu_vs_989_at_least=0.35)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--small", action="store_true", help="tiny sizes (a CPU smoke test of the script)")
    p.add_argument("--issue10", action="store_true", help="only issue 10's checks (see the module docstring)")
    args = p.parse_args()
    from jaxalign.config.presets import preset_hf_config

    record(what="devices", devices=[str(d) for d in jax.devices()], jax=jax.__version__)
    if args.issue10:
        issue10(args.small)
        with open(args.out, "w") as f:
            json.dump(RESULTS, f, indent=1)
        return
    n = 1024 if args.small else 8192
    bf16_peak = matmul_peak(jnp.bfloat16, n)
    f32_peak = matmul_peak(jnp.float32, n // 2)
    record(what="matmul_peak_tflops", bf16=round(bf16_peak, 1), f32=round(f32_peak, 1))
    shapes = (2, 256, 9, 64) if args.small else (8, 2048, 9, 64)
    for impl in ("xla", "cudnn"):
        try:
            t, tf = attention(impl, *shapes)
            record(what="attention_fwd_bwd", impl=impl, shape=shapes, s=round(t, 5), tflops=round(tf, 1))
        except Exception as e:  # cudnn missing or unsupported on this device
            record(what="attention_fwd_bwd", impl=impl, shape=shapes, error=str(e).splitlines()[0][:200])
    bench_hf = preset_hf_config("small" if args.small else "bench-llama-4x512")
    B, T, P = (2, 64, 16) if args.small else (8, 256, 64)
    for dtype, peak in (("float32", f32_peak), ("bfloat16", bf16_peak)):
        train_step_figures("bench-llama-4x512", bench_hf, "dpo", dtype, B, T, P, peak)
    smol = dict(SMOLLM2, num_hidden_layers=4) if args.small else SMOLLM2
    student = dict(smol, num_hidden_layers=smol["num_hidden_layers"] - smol["num_hidden_layers"] // 5)
    for (B, T) in ([(2, 64)] if args.small else [(4, 256), (32, 512)]):
        train_step_figures("smollm2-daDPO", student, "dadpo", "bfloat16", B, T, T // 4, bf16_peak, teacher_hf=smol)
    for B in ((2,) if args.small else (16, 64)):
        generation_figures(smol, "bfloat16", B, 16 if args.small else 128)
    with open(args.out, "w") as f:
        json.dump(RESULTS, f, indent=1)


if __name__ == "__main__":
    main()
