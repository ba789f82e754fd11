"""daDPO train-step figures on the real SmolLM2-135M: student = the model with 20% of its layers
removed (policy and reference), teacher = the full model, all three in the step.

    python benchmarks/dadpo_step.py [--hf-dir DIR] [--batch 4] [--seq 256] [--steps 3]

Prints compile time, seconds per step, tokens/s and how many times the step compiled.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hf-dir", default="")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--remat", default="none")
    args = parser.parse_args()

    from jaxalign.config.schema import LossConfig, OptimizerConfig
    from jaxalign.models import layers_to_drop, load_model, prune_layers
    from jaxalign.models.bundled import smollm2_gguf_path
    from jaxalign.models.gguf_import import gguf_to_hf
    from jaxalign.train.objectives import ObjectiveContext, get_objective
    from jaxalign.train.optimizer import build_optimizer
    from jaxalign.train.step import GraphDefs, make_loss_fn, make_train_step

    hf_dir = Path(args.hf_dir) if args.hf_dir else Path(tempfile.mkdtemp()) / "smollm2"
    if not args.hf_dir:
        gguf_to_hf(smollm2_gguf_path(), hf_dir)
    teacher = load_model(hf_dir, remat=args.remat)
    student = prune_layers(teacher, layers_to_drop(teacher.config.num_layers, 0.2))
    print(f"teacher {teacher.config.num_layers} layers, student {student.config.num_layers} layers")
    s_graph, params = nnx.split(student)
    params = jax.tree.map(jnp.copy, params)  # the pruned student shares embeddings with the teacher; the step donates
    t_graph, t_params = nnx.split(teacher)
    frozen = {"reference": jax.tree.map(jnp.copy, params), "teacher": t_params}
    loss_fn = make_loss_fn(get_objective("dadpo"), ObjectiveContext(LossConfig(name="dadpo")),
                           GraphDefs(policy=s_graph, reference=s_graph, teacher=t_graph))
    tx, schedule = build_optimizer(OptimizerConfig(lr=1e-6), 100, params)
    # Committed to one device like the trainer's state: an uncommitted scalar would make the
    # second call (fed the first call's committed outputs) compile again.
    state = jax.device_put({"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": jax.jit(tx.init)(params),
                            "rng": jax.random.key_data(jax.random.key(0))}, jax.devices()[0])
    step = make_train_step(loss_fn, tx, schedule, state_shardings=jax.tree.map(lambda x: x.sharding, state))

    rng = np.random.default_rng(0)
    B, T = args.batch, args.seq
    batch = {"example_mask": np.ones((B, 1), np.int32)}
    for side in ("chosen", "rejected"):
        batch[f"{side}_input_ids"] = rng.integers(3, 49152, (B, T)).astype(np.int32)
        mask = np.zeros((B, T), np.int32)
        mask[:, args.prompt:] = 1
        batch[f"{side}_loss_mask"] = mask
        batch[f"{side}_positions"] = np.tile(np.arange(T, dtype=np.int32), (B, 1))
        batch[f"{side}_segment_ids"] = np.ones((B, T), np.int32)
    batch = jax.device_put(batch, jax.devices()[0])

    t = time.perf_counter()
    state, metrics = step(state, frozen, batch)
    jax.block_until_ready(metrics["loss"])
    first = time.perf_counter() - t
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, metrics = step(state, frozen, batch)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t)
    per_step = float(np.median(times))
    tokens = 2 * B * T
    print(f"daDPO step, batch {B} pairs x {T} tokens ({tokens} tokens through student, reference and teacher):")
    print(f"  first step (compile + run) {first:.1f} s; steady {per_step:.2f} s/step (median of {len(times)}), "
          f"{tokens / per_step:.0f} tokens/s; compiled {step._cache_size()} time(s); loss {float(metrics['loss']):.4f}")


if __name__ == "__main__":
    main()
