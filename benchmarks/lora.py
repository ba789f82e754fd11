"""DPO with LoRA against full fine-tuning on the real SmolLM2-135M-Instruct, through the trainer's own step.

    python benchmarks/lora.py [--rank 8] [--steps 3] [--batch 8] [--max-length 128] [--out runs/bench_lora]

Runs each mode in its own process (so each peak RSS is its own) on the same data and settings
(float32, one device, `configs/dpo.yaml` with lr 1e-4 constant): LoRA (`model.lora.rank=R`,
all-linear, alpha 2R) and full fine-tuning. Data: the first `--batch * steps` shipped training
prompts, each with a short helpful answer (chosen) and a refusal (rejected), through SmolLM2's
chat template. Prints, for LoRA: the reference log-probs against the base model loaded without
adapters (max |difference|, computed by the objectives' `frozen_logps` exactly as the step does),
the first loss against ln 2, which parameters changed (by kind), the optimizer state's size, and
the merged export read back by `transformers` against the merged JAX model (max |logit
difference|) in float32, what that float32 gap is made of (transformers' own sdpa vs eager; each run's
distance to float64 logits), the exported tensors read back against the merged model's, and the same
export comparison in float64 on both sides (which leaves float32 rounding out: the export's own parity). For both: trainable parameters, XLA's compiled temp / argument memory of the train
step, the process's peak RSS after the steps, seconds per step, and the LoRA / full ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

ANSWER = " Here is a short, clear answer to your question, with the key facts first."
REFUSAL = " I can't help with that."


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_pairs(path: Path, n: int) -> Path:
    from importlib import resources

    prompts = resources.files("jaxalign.pipeline.assets").joinpath("prompts_train.jsonl").read_text().splitlines()[:n]
    rows = []
    for line in prompts:
        p = json.loads(line)["prompt"]
        rows.append({"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": ANSWER}],
                     "rejected": [{"role": "assistant", "content": REFUSAL}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def overrides(args, mode: str, data: Path) -> list[str]:
    out = [f"model.path={args.model}", "model.dtype=float32", "model.param_dtype=float32", "model.remat=none",
           f"data.path={data}", f"data.batch_size={args.batch}", f"data.max_length={args.max_length}",
           f"data.max_prompt_length={args.max_length // 2}", f"data.buckets=[{args.max_length}]", "data.shuffle=false",
           "optimizer.lr=1e-4", "optimizer.schedule=constant", "optimizer.warmup_steps=0",
           f"train.steps={args.steps}", "train.epochs=0", f"train.output_dir={args.out}/{mode}", "train.export_hf=true",
           "checkpoint.resume=false", "mesh.data=1", "logging.tensorboard=false", "logging.progress_bar=false",
           "logging.plot=false"]
    if mode == "lora":
        out += [f"model.lora.rank={args.rank}", f"model.lora.alpha={2 * args.rank}", "model.lora.targets=[all-linear]"]
    return out


def child(args) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    jax.config.update("jax_default_matmul_precision", "highest")  # float32 matmuls as the tests run them
    from jaxalign.config import load_config
    from jaxalign.models.lora import LoraParam, merge_lora
    from jaxalign.objectives.common import frozen_logps
    from jaxalign.train.build import build_model
    from jaxalign.train.forward import Sequences
    from jaxalign.train.step import merge_models, policy_model
    from jaxalign.train.trainer import Trainer

    config = load_config("configs/dpo.yaml", overrides(args, args.child, Path(args.data)))
    trainer = Trainer(config)
    lora = args.child == "lora"
    rss_loaded = _rss_gib()
    batches = iter(trainer._batcher(trainer.data))
    with jax.set_mesh(trainer.mesh):
        batch = trainer._global(next(batches))
        memory = trainer.train_step.lower(trainer.state, trainer.frozen, batch).compile().memory_analysis()
        before = None
        if lora:  # the adapters only (small); the base weights are checked against a fresh load afterwards
            before = {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(trainer.state["params"])}
        trainable = sum(x.size for x in jax.tree.leaves(trainer.state["params"]))
        opt_elements = sum(x.size for x in jax.tree.leaves(trainer.state["opt_state"]))
        losses, times = [], []
        for step in range(args.steps):
            if step:
                batch = trainer._global(next(batches))
            t = time.perf_counter()
            trainer.state, metrics = trainer.train_step(trainer.state, trainer.frozen, batch)
            losses.append(float(metrics["loss"]))
            times.append(time.perf_counter() - t)
        result = {"mode": args.child, "trainable": int(trainable), "opt_state_elements": int(opt_elements),
                  "temp_bytes": int(memory.temp_size_in_bytes), "argument_bytes": int(memory.argument_size_in_bytes),
                  "losses": losses, "step_seconds": times, "rss_loaded_gib": rss_loaded,
                  "peak_rss_gib": _rss_gib(),  # before any check loads a second model
                  "compiles": trainer.train_step._cache_size()}
        if lora:
            result.update(_lora_checks(trainer, before, batch, build_model, merge_models, policy_model, merge_lora,
                                       frozen_logps, Sequences, LoraParam))
    return result


def _lora_checks(trainer, before, batch, build_model, merge_models, policy_model, merge_lora, frozen_logps, Sequences,
                 LoraParam) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers
    from flax import nnx

    from jaxalign.objectives import ObjectiveContext

    out = {}
    # 1. reference log-probs (the policy with adapters disabled, as the step builds it) vs the base model
    models = merge_models(trainer.graphdefs, trainer.state["params"], trainer.frozen)
    base = build_model(trainer.config.model, key="model", mesh=trainer.mesh)
    both = Sequences.concat(Sequences.from_batch(batch, "chosen_"), Sequences.from_batch(batch, "rejected_"))
    k = batch["example_mask"].shape[1]
    octx = ObjectiveContext(trainer.config.loss)

    def logps(model):
        graphdef, state = nnx.split(model)
        return np.asarray(jax.jit(lambda s: frozen_logps(nnx.merge(graphdef, s), both, k, octx).logps)(state))

    ref, base_lp, pol = logps(models.reference), logps(base), logps(models.policy)
    out["reference_vs_base_max_abs"] = float(np.abs(ref - base_lp).max())
    out["policy_vs_base_max_abs"] = float(np.abs(pol - base_lp).max())
    # 2. what changed: the frozen base weights against the same model freshly loaded, the adapters against before
    fresh = dict(nnx.to_flat_state(nnx.state(base)))
    after_base = nnx.to_flat_state(trainer.frozen["policy"])
    out["base_tensors"] = len(after_base)
    out["base_tensors_changed"] = sum(not np.array_equal(np.asarray(fresh[p][...]), np.asarray(v[...])) for p, v in after_base)
    out["base_elements"] = int(sum(v[...].size for _, v in after_base))
    kinds: dict[str, list[int]] = {}
    for path, v in nnx.to_flat_state(trainer.state["params"]):
        name = ".".join(map(str, path))
        kind = f"{type(v).__name__} {name.rsplit('_', 1)[-1]}" if isinstance(v, LoraParam) else "other"
        changed = not np.array_equal(before[name], np.asarray(v[...]))
        kinds.setdefault(kind, [0, 0, 0])
        kinds[kind][0] += 1
        kinds[kind][1] += int(changed)
        kinds[kind][2] += int(v[...].size)
    out["adapter_kinds"] = kinds
    # 3. merged export through the trainer's export path, read by transformers
    export = trainer.export()
    hf = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    ids = np.asarray(batch["chosen_input_ids"][:2])
    with torch.no_grad():
        theirs = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    merged = merge_lora(policy_model(trainer.graphdefs.policy, trainer.state["params"], trainer.frozen))
    graphdef, state = nnx.split(merged)
    ours = np.asarray(jax.jit(lambda s: nnx.merge(graphdef, s)(jnp.asarray(ids)))(state))
    adapted = policy_model(trainer.graphdefs.policy, trainer.state["params"], trainer.frozen)
    g2, s2 = nnx.split(adapted)
    unmerged = np.asarray(jax.jit(lambda s: nnx.merge(g2, s)(jnp.asarray(ids)))(s2))
    out["export_vs_merged_max_abs"] = float(np.abs(theirs - ours).max())
    # baseline: the same comparison for the base model as imported (no LoRA anywhere), same ids
    base_dir = Path(trainer.config.model.path) if Path(trainer.config.model.path).is_dir() else Path(
        _resolved(trainer.config.model.path))
    base_hf = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base_theirs = base_hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    g3, s3 = nnx.split(base)
    base_ours = np.asarray(jax.jit(lambda s: nnx.merge(g3, s)(jnp.asarray(ids)))(s3))
    out["base_jax_vs_transformers_max_abs"] = float(np.abs(base_theirs - base_ours).max())
    out["merged_vs_adapters_max_abs"] = float(np.abs(ours - unmerged).max())
    out["logit_scale"] = float(np.abs(ours).max())
    out.update(_export_precision(export, base_dir, ids, merged, ours, theirs))
    return out


def _export_precision(export, base_dir, ids, merged, ours, theirs) -> dict:
    """Where the float32 gap comes from: transformers' own two attention paths against each other,
    the exported tensors read back against the merged model's, and the export in float64 on both sides
    (transformers with its float32 islands lifted, `jaxalign.models.verify.transformers_logits_float64`;
    the merged model as exported, run with `jax.enable_x64`), base model alike; then each float32 run's
    distance to the float64 logits."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers
    from flax import nnx

    from jaxalign.models import load_model
    from jaxalign.models.verify import transformers_logits_float64

    def jax_logits(model):
        graphdef, state = nnx.split(model)
        return np.asarray(jax.jit(lambda s: nnx.merge(graphdef, s)(jnp.asarray(ids)))(state))

    out = {}
    eager = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        theirs_eager = eager(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    out["export_vs_merged_eager_max_abs"] = float(np.abs(theirs_eager - ours).max())
    out["transformers_sdpa_vs_eager_max_abs"] = float(np.abs(theirs - theirs_eager).max())
    written = dict(nnx.to_flat_state(nnx.state(load_model(export), nnx.Param)))
    expected = dict(nnx.to_flat_state(nnx.state(merged, nnx.Param)))
    assert written.keys() == expected.keys(), "the export holds other tensors than the merged model"
    out["export_weights_vs_merged_max_abs"] = max(
        float(np.abs(np.asarray(written[k][...]) - np.asarray(v[...])).max()) for k, v in expected.items())
    for name, folder in (("export", export), ("base", base_dir)):
        theirs64 = transformers_logits_float64(folder, ids)
        with jax.enable_x64(True):
            ours64 = jax_logits(load_model(folder, dtype=jnp.float64))
        assert ours64.dtype == np.float64
        out[f"{name}_float64_max_abs"] = float(np.abs(ours64 - theirs64).max())
        if name == "export":
            out["merged_float32_vs_float64_max_abs"] = float(np.abs(ours - theirs64).max())
            out["transformers_float32_vs_float64_max_abs"] = float(np.abs(theirs - theirs64).max())
            out["transformers_eager_float32_vs_float64_max_abs"] = float(np.abs(theirs_eager - theirs64).max())
    return out


def _resolved(path: str) -> str:
    from jaxalign.models.resolve import resolve_model_path

    return str(resolve_model_path(path))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bundled:smollm2-135m-instruct")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--out", default="runs/bench_lora")
    parser.add_argument("--child", choices=("lora", "full"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    from jaxalign.models.resolve import resolve_model_path

    resolve_model_path(args.model)  # the one-time GGUF import happens here, not inside a measured child
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = write_pairs(out / "pairs.jsonl", args.batch * args.steps)
    results = {}
    for mode in ("lora", "full"):
        cmd = [sys.executable, __file__, "--child", mode, "--data", str(data), "--model", args.model, "--rank",
               str(args.rank), "--steps", str(args.steps), "--batch", str(args.batch), "--max-length",
               str(args.max_length), "--out", str(out)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{mode} run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        results[mode] = json.loads(line[0][len("RESULT "):])
        print(f"{mode}: done in {time.perf_counter() - t:.0f} s", flush=True)
    lo, fu = results["lora"], results["full"]
    print(f"\nDPO on {args.model}, {args.steps} steps of {args.batch} pairs x {args.max_length} tokens, float32, 1 device")
    print(f"LoRA rank {args.rank}, alpha {2 * args.rank}, all-linear:")
    print(f"  reference log-probs vs base model (no adapters): max |diff| {lo['reference_vs_base_max_abs']:.3g} "
          f"(policy after training vs base: {lo['policy_vs_base_max_abs']:.3g})")
    print(f"  first loss {lo['losses'][0]:.9f}, ln 2 = {math.log(2):.9f}, |diff| {abs(lo['losses'][0] - math.log(2)):.3g}")
    print(f"  base weights changed: {lo['base_tensors_changed']} of {lo['base_tensors']} tensors "
          f"({lo['base_elements'] / 1e6:.1f}M elements)")
    for kind, (n, changed, size) in sorted(lo["adapter_kinds"].items()):
        print(f"  {kind}: {changed} of {n} tensors changed ({size} elements)")
    print(f"  optimizer state: {lo['opt_state_elements']} elements "
          f"(trainable {lo['trainable']}; full fine-tuning: {fu['opt_state_elements']} of {fu['trainable']})")
    print(f"  merged export read by transformers vs merged JAX model: max |logit diff| {lo['export_vs_merged_max_abs']:.3g} "
          f"(logits up to {lo['logit_scale']:.1f}); merged vs adapters: {lo['merged_vs_adapters_max_abs']:.3g}; "
          f"baseline, the base model without LoRA, jaxalign vs transformers: {lo['base_jax_vs_transformers_max_abs']:.3g}")
    print(f"    float32 noise, not the export: transformers' own sdpa vs eager attention on the export "
          f"{lo['transformers_sdpa_vs_eager_max_abs']:.3g}; export (eager) vs merged JAX {lo['export_vs_merged_eager_max_abs']:.3g}; "
          f"distance to the float64 logits: merged JAX float32 {lo['merged_float32_vs_float64_max_abs']:.3g}, "
          f"transformers sdpa {lo['transformers_float32_vs_float64_max_abs']:.3g}, eager "
          f"{lo['transformers_eager_float32_vs_float64_max_abs']:.3g}")
    print(f"    the export itself: tensors read back vs the merged model's, max |diff| {lo['export_weights_vs_merged_max_abs']:.3g}; "
          f"in float64 on both sides, merged export read by transformers vs merged JAX model: max |logit diff| "
          f"{lo['export_float64_max_abs']:.3g} (base model: {lo['base_float64_max_abs']:.3g})")
    print("\n| | LoRA | full fine-tuning | LoRA / full |")
    print("|---|---|---|---|")
    rows = [("trainable parameters", lo["trainable"], fu["trainable"], "{:,}"),
            ("compiled temp memory (GiB)", lo["temp_bytes"] / 2**30, fu["temp_bytes"] / 2**30, "{:.3f}"),
            ("compiled argument memory (GiB)", lo["argument_bytes"] / 2**30, fu["argument_bytes"] / 2**30, "{:.3f}"),
            ("RSS after loading (GiB)", lo["rss_loaded_gib"], fu["rss_loaded_gib"], "{:.2f}"),
            ("peak RSS after the steps (GiB)", lo["peak_rss_gib"], fu["peak_rss_gib"], "{:.2f}"),
            ("s/step (median after the first)", _median(lo["step_seconds"][1:] or lo["step_seconds"]),
             _median(fu["step_seconds"][1:] or fu["step_seconds"]), "{:.2f}")]
    for name, a, b, fmt in rows:
        print(f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.3f} |")
    print(f"losses: LoRA {', '.join(f'{x:.4f}' for x in lo['losses'])}; full {', '.join(f'{x:.4f}' for x in fu['losses'])}; "
          f"step compiled {lo['compiles']} / {fu['compiles']} time(s)")
    (out / "results.json").write_text(json.dumps(results, indent=2))


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


if __name__ == "__main__":
    main()
