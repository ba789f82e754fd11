"""Token-level distillation from a cached top-k teacher vs the teacher in the step, on the real SmolLM2-135M.

    python benchmarks/topk_cache.py [--hf-dir DIR] [--batch 2] [--seq 128] [--prompt 32] [--k 32 [--k 1024]] [--steps 3]

Teacher = SmolLM2-135M-Instruct (bundled GGUF), student = the same model with 20% of its layers removed
(policy; the reference's log-probs are cached columns in both runs). The batch is English text (the
shipped prompt sets, tokenised and concatenated). Prints, in one run on one batch:

- per cache size k (``--k``, repeatable; default 32): the teacher's mass outside its top k, and the KD loss
  (each divergence) from the k-cache (k ids + residual bucket, ``loss.kd_cache``) against the teacher in
  the step (full vocabulary), and their difference;
- the daDPO + KD (forward KL, chosen) train step's seconds per step (the two steps alternate) with the cache (teacher not in the
  step: its sequence log-probs are columns, its distributions the first k's cache) against the teacher in
  the step (teacher forward each step), their ratio, and how many times each step compiled.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def text_batch(tokenizer, B: int, T: int, prompt: int) -> dict:
    """`B` pairs of `T`-token English sequences (prompt = the first `prompt` tokens), one example per row."""
    from jaxalign.pipeline.rows import asset_path

    lines = [json.loads(x)["prompt"] for name in ("prompts_train.jsonl", "prompts_heldout.jsonl")
             for x in asset_path(name).read_text().splitlines() if x.strip()]
    ids = np.asarray(tokenizer(" ".join(lines), add_special_tokens=False)["input_ids"], np.int32)
    if len(ids) < 2 * B * T:
        raise SystemExit(f"the prompt sets give {len(ids)} tokens, fewer than 2 x {B} x {T}")
    batch = {"example_mask": np.ones((B, 1), np.int32)}
    for s, side in enumerate(("chosen", "rejected")):
        batch[f"{side}_input_ids"] = ids[s * B * T:(s + 1) * B * T].reshape(B, T)
        mask = np.zeros((B, T), np.int32)
        mask[:, prompt:] = 1
        batch[f"{side}_loss_mask"] = mask
        batch[f"{side}_positions"] = np.tile(np.arange(T, dtype=np.int32), (B, 1))
        batch[f"{side}_segment_ids"] = np.ones((B, T), np.int32)
    return batch


def cache_columns(graphdef, state, batch: dict, k: int, chunk: int) -> dict:
    """What `jaxalign score` writes for this batch, as the collator lays it out: the teacher's (or reference's)
    sequence log-probs and, with k > 0, its top-k arrays (entry t = distribution of token t)."""
    from jaxalign.ops import teacher_topk
    from jaxalign.train.forward import Sequences, sequence_logps, split_pairs

    @jax.jit
    def run(state, b):
        model = nnx.merge(graphdef, state)
        both = Sequences.concat(Sequences.from_batch(b, "chosen_"), Sequences.from_batch(b, "rejected_"))
        out = sequence_logps(model, both, 1, chunk_size=chunk)
        c, r = split_pairs(out.logps)
        top = teacher_topk(out.hidden[:, :-1], model.lm_head_weight(), k, chunk_size=chunk) if k else None
        return c, r, top

    c, r, top = run(state, batch)
    cols = {"chosen_logps": c[:, None], "rejected_logps": r[:, None]}
    if top is not None:
        B = c.shape[0]
        for name, x in zip(("ids", "logps", "residual"), top):
            full = jnp.pad(x, [(0, 0), (1, 0)] + [(0, 0)] * (x.ndim - 2))  # position 0 predicts nothing
            cols[f"chosen_topk_{name}"], cols[f"rejected_topk_{name}"] = full[:B], full[B:]
    return cols


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hf-dir", default="")
    parser.add_argument("--batch", type=int, default=2, help="pairs per step")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--k", type=int, action="append", help="cache size (repeatable); default 32")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first (compiling) one")
    parser.add_argument("--chunk", type=int, default=256)
    args = parser.parse_args()

    from jaxalign.config.schema import LossConfig, OptimizerConfig
    from jaxalign.models import layers_to_drop, load_model, load_tokenizer, prune_layers
    from jaxalign.models.bundled import smollm2_gguf_path
    from jaxalign.models.gguf_import import gguf_to_hf
    from jaxalign.objectives import ObjectiveContext, get_objective
    from jaxalign.ops import DIVERGENCES
    from jaxalign.train.optimizer import build_optimizer
    from jaxalign.train.step import GraphDefs, make_loss_fn, make_train_step

    hf_dir = Path(args.hf_dir) if args.hf_dir else Path(tempfile.mkdtemp()) / "smollm2"
    if not args.hf_dir:
        gguf_to_hf(smollm2_gguf_path(), hf_dir)
    teacher = load_model(hf_dir)
    student = prune_layers(teacher, layers_to_drop(teacher.config.num_layers, 0.2))
    s_graph, params = nnx.split(student)
    params = jax.tree.map(jnp.copy, params)  # the pruned student shares buffers with the teacher; the step donates
    t_graph, t_params = nnx.split(teacher)
    B, T, ks = args.batch, args.seq, args.k or [32]
    host = text_batch(load_tokenizer(str(hf_dir)), B, T, args.prompt)
    dev = jax.devices()[0]
    plain = jax.device_put(host, dev)
    ref = cache_columns(s_graph, params, plain, 0, args.chunk)
    base = {**plain, "ref_chosen_logps": ref["chosen_logps"], "ref_rejected_logps": ref["rejected_logps"]}
    print(f"SmolLM2-135M teacher ({teacher.config.num_layers} layers), student {student.config.num_layers} layers, "
          f"vocab {teacher.config.vocab_size}; batch {B} pairs x {T} tokens ({T - args.prompt} response tokens each)")

    # KD loss: cache vs teacher in the step, same policy, same batch (no optimizer step).
    def kd_value(divergence, graphdefs, frozen, batch):
        loss = LossConfig(name="dadpo", kd_weight=1.0, kd_divergence=divergence, chunk_size=args.chunk)
        fn = make_loss_fn(get_objective("dadpo"), ObjectiveContext(loss), graphdefs)
        return float(jax.jit(fn)(params, frozen, batch)[1]["loss/kd"])

    no_teacher = GraphDefs(policy=s_graph)
    with_teacher = GraphDefs(policy=s_graph, teacher=t_graph)
    in_step = {d: kd_value(d, with_teacher, {"teacher": t_params}, base) for d in DIVERGENCES}
    cached = None
    for k in ks:
        tea = cache_columns(t_graph, t_params, plain, k, args.chunk)
        batch = {**base, "teacher_chosen_logps": tea["chosen_logps"], "teacher_rejected_logps": tea["rejected_logps"],
                 **{key: v for key, v in tea.items() if "topk" in key}}
        cached = cached or (k, batch)
        res = np.exp(np.asarray(tea["chosen_topk_residual"])[:, args.prompt:])
        print(f"  k={k}: teacher mass outside its top-{k} on the chosen responses: mean {res.mean():.4f}, "
              f"max {res.max():.4f}")
        for d in DIVERGENCES:
            a, b = kd_value(d, no_teacher, {}, batch), in_step[d]
            print(f"    KD {d:10s}: cached k={k} {a:.6f}, teacher in step {b:.6f}, difference {a - b:+.3e} "
                  f"(relative {(a - b) / b:+.2e})", flush=True)

    # Train-step time: daDPO + KD from the cache (no teacher) vs the teacher in the step.
    loss = LossConfig(name="dadpo", kd_weight=1.0, chunk_size=args.chunk)
    tx, schedule = build_optimizer(OptimizerConfig(lr=1e-6), 100, params)
    print(f"  train steps: the cache of k={cached[0]}; the two steps alternate, so load changes hit both alike")
    runs = {}
    for name, graphdefs, frozen, batch in (("cached", no_teacher, {}, cached[1]),
                                           ("teacher in step", with_teacher, {"teacher": t_params}, base)):
        fn = make_loss_fn(get_objective("dadpo"), ObjectiveContext(loss), graphdefs)
        state = jax.device_put({"step": jnp.zeros((), jnp.int32), "params": jax.tree.map(jnp.copy, params),
                                "opt_state": jax.jit(tx.init)(params), "rng": jax.random.key_data(jax.random.key(0))}, dev)
        step = make_train_step(fn, tx, schedule, state_shardings=jax.tree.map(lambda x: x.sharding, state))
        runs[name] = dict(step=step, state=state, frozen=frozen, batch=batch, times=[], losses=[])
    for _ in range(args.steps + 1):
        for r in runs.values():
            t = time.perf_counter()
            r["state"], metrics = r["step"](r["state"], r["frozen"], r["batch"])
            r["losses"].append(float(metrics["loss"]))
            r["times"].append(time.perf_counter() - t)
    for name, r in runs.items():
        r["per_step"] = float(np.median(r["times"][1:])) if args.steps else r["times"][0]
        print(f"  step {name:15s}: first (compile + run) {r['times'][0]:.1f} s, steady {r['per_step']:.2f} s/step "
              f"(median of {args.steps}: {', '.join(f'{x:.1f}' for x in r['times'][1:])}), compiled "
              f"{r['step']._cache_size()} time(s); losses {', '.join(f'{x:.5f}' for x in r['losses'])}", flush=True)
    a, b = runs["cached"], runs["teacher in step"]
    pairs = [x / y for x, y in zip(a["times"][1:], b["times"][1:])]
    print(f"  step time cached / teacher in step: {a['per_step'] / b['per_step']:.3f}x (ratio of medians); "
          f"per alternating pair {', '.join(f'{x:.3f}' for x in pairs)}")


if __name__ == "__main__":
    main()
