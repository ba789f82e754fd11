"""daDPO train-step figures on the real SmolLM2-135M: student = the model with 20% of its layers
removed (policy and reference), teacher = the full model, all three in the step.

    python benchmarks/dadpo_step.py [--hf-dir DIR] [--batch 4] [--seq 256] [--steps 3] [--attention xla --attention blockwise]

Per attention implementation: compile time, XLA temp memory of the compiled step, seconds per step,
tokens/s, how many times the step compiled and the losses; with several implementations, their temp
memory ratio and largest loss difference against the first (same run, same batch).
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


#: Step metrics compared between implementations besides the loss (at step 0 the daDPO loss can be
#: ~0 when the teacher's margin dominates, so the policy's log-probs and the gradient norm carry the check).
COMPARED = ("logps/chosen", "logps/rejected", "grad_norm")


def build(hf_dir: Path, attention: str, remat: str, B: int, T: int, prompt: int):
    """(step, state, frozen, batch) of the daDPO step with `model.attention=attention`."""
    from jaxalign.config.schema import LossConfig, OptimizerConfig
    from jaxalign.models import layers_to_drop, load_model, prune_layers
    from jaxalign.objectives import ObjectiveContext, get_objective
    from jaxalign.train.optimizer import build_optimizer
    from jaxalign.train.step import GraphDefs, make_loss_fn, make_train_step

    teacher = load_model(hf_dir, remat=remat, attention=attention)
    student = prune_layers(teacher, layers_to_drop(teacher.config.num_layers, 0.2))
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
    batch = {"example_mask": np.ones((B, 1), np.int32)}
    for side in ("chosen", "rejected"):
        batch[f"{side}_input_ids"] = rng.integers(3, 49152, (B, T)).astype(np.int32)
        mask = np.zeros((B, T), np.int32)
        mask[:, prompt:] = 1
        batch[f"{side}_loss_mask"] = mask
        batch[f"{side}_positions"] = np.tile(np.arange(T, dtype=np.int32), (B, 1))
        batch[f"{side}_segment_ids"] = np.ones((B, T), np.int32)
    batch = jax.device_put(batch, jax.devices()[0])
    return step, state, frozen, batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hf-dir", default="")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first; 0 = compile only")
    parser.add_argument("--remat", default="none")
    parser.add_argument("--attention", action="append",
                        help="model.attention (repeatable: each is compiled, its temp memory reported, run and compared)")
    args = parser.parse_args()

    from jaxalign.models.bundled import smollm2_gguf_path
    from jaxalign.models.gguf_import import gguf_to_hf

    hf_dir = Path(args.hf_dir) if args.hf_dir else Path(tempfile.mkdtemp()) / "smollm2"
    if not args.hf_dir:
        gguf_to_hf(smollm2_gguf_path(), hf_dir)
    B, T = args.batch, args.seq
    tokens = 2 * B * T
    print(f"daDPO step, batch {B} pairs x {T} tokens ({tokens} tokens through student, reference and teacher):")
    results = {}
    for impl in args.attention or ["auto"]:
        step, state, frozen, batch = build(hf_dir, impl, args.remat, B, T, args.prompt)
        t = time.perf_counter()
        temp = step.lower(state, frozen, batch).compile().memory_analysis().temp_size_in_bytes
        print(f"  attention={impl} remat={args.remat}: compile {time.perf_counter() - t:.1f} s, temp {temp / 2**30:.2f} GiB",
              flush=True)
        results[impl] = dict(temp=temp, losses=[], compared=[])
        if args.steps == 0:  # compile only: the memory figure, nothing run
            continue
        times = []
        for _ in range(args.steps + 1):
            t = time.perf_counter()
            state, metrics = step(state, frozen, batch)
            results[impl]["losses"].append(float(metrics["loss"]))
            results[impl]["compared"].append({k: float(metrics[k]) for k in COMPARED if k in metrics})
            times.append(time.perf_counter() - t)
        per_step = float(np.median(times[1:])) if args.steps else times[0]
        print(f"    steady {per_step:.2f} s/step (median of {args.steps}), {tokens / per_step:.0f} tokens/s; "
              f"compiled {step._cache_size()} time(s); losses {', '.join(f'{x:.6f}' for x in results[impl]['losses'])}")
    base = next(iter(results))
    for impl, r in list(results.items())[1:]:
        diff = max((abs(a - b) for a, b in zip(r["losses"], results[base]["losses"])), default=float("nan"))
        rel = max((abs(a[k] - b[k]) / max(abs(b[k]), 1e-30) for a, b in zip(r["compared"], results[base]["compared"])
                   for k in b), default=float("nan"))
        print(f"  {impl} / {base}: temp {r['temp'] / results[base]['temp']:.3f}x, max |loss difference| {diff:.2e}, "
              f"max relative difference of {', '.join(COMPARED)} {rel:.2e}")
        for i, (a, b) in enumerate(zip(r["compared"], results[base]["compared"])):  # where that maximum comes from
            print(f"    step {i}: " + ", ".join(f"{k} {a[k]:.6g} vs {b[k]:.6g} (rel {abs(a[k] - b[k]) / max(abs(b[k]), 1e-30):.1e})"
                                             for k in b))


if __name__ == "__main__":
    main()
