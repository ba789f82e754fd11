"""Throughput of jaxalign's jitted DPO train step (issue 4 "Speed"), against TRL and a plain PyTorch loop.

Setup (the issue's): float32 ``bench-llama-4x512`` (4 layers, hidden 512, MLP 1376, 8 heads / 4 KV
heads, vocab 32000, untied head), 8 pairs x 256 tokens (prompt 64, response 192), DPO sigmoid with
the reference forward inside the step, AdamW. Token ids are random.

    .venv/bin/python benchmarks/train_step.py                      # jaxalign as shipped
    .venv/bin/python benchmarks/train_step.py --torch --trl        # + plain PyTorch loop + TRL DPOTrainer
    .venv/bin/python benchmarks/train_step.py --variant shipped --variant "chunk=1024,save=0"

Every framework / variant runs in its own subprocess (its peak RSS is its own; XLA flags are read at
start-up). The float32 matmul peak (jnp ``N x N @ N x N``, best of several) is measured by the parent
before and after the children, and the better of the two is the reference: the machine may be shared,
so compare the ratios printed at the end, all measured in one run, rather than absolute figures.

A jaxalign variant is a name (``shipped``) or comma-separated ``key=value`` pairs over ``shipped``
(the library's defaults); each key is a config option of the library, never a patch of it:

  remat=none|full|dots     per-layer rematerialisation (``model.remat``)
  layers=scan|unroll       ``model.layer_loop``: decoder layers under ``lax.scan`` or unrolled with
                           static slices of the stacked weights
  attn=IMPL                ``model.attention``: auto | xla | blockwise | ... (``jaxalign.ops.attention``)
  chunk=N                  ``loss.chunk_size``: packed scored positions per chunk of the LM head
  ref=model|cached         reference forward in the step (the issue's setup) or precomputed
                           reference log-probs in the batch (jaxalign's ``score`` stage; informative only)
  xla=FLAGS                extra XLA_FLAGS for this variant (space-separated)
  src=DIR                  run the variant with another checkout of jaxalign first on PYTHONPATH (e.g.
                           ``git worktree add /tmp/base <rev>``): the same step of an earlier revision,
                           timed in the same run, for a regression ratio

FLOPs: matmul FLOPs of the step's math, never counting rematerialisation (see ``flop_counts``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

PRESET = "bench-llama-4x512"
SHIPPED = {"remat": "none", "layers": "scan", "attn": "auto", "chunk": "256", "ref": "model", "xla": "", "src": ""}
NAMED = {"shipped": {}}


def parse_variant(spec: str) -> tuple[str, dict]:
    """``name`` | ``name,key=value,...`` | ``key=value,...`` (over ``shipped``)."""
    parts = [x for x in spec.split(",") if x.strip()]
    out = dict(SHIPPED)
    if parts and parts[0].strip() in NAMED:
        out.update(NAMED[parts.pop(0).strip()])
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in SHIPPED:
            raise SystemExit(f"bad variant part {part!r}: expected key=value with key in {', '.join(SHIPPED)}")
        out[key.strip()] = value.strip()
    return spec, out


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hf_config() -> dict:
    from jaxalign.config.presets import preset_hf_config

    return preset_hf_config(os.environ.get("JAXALIGN_BENCH_PRESET", PRESET))


# ---------------------------------------------------------------------------------------------- FLOPs
def flop_counts(hf: dict, pairs: int, prompt: int, response: int) -> dict:
    """Matmul FLOPs of one DPO step (policy fwd+bwd, reference fwd), rematerialisation not counted.

    N_layers = L * (D*H*Dh [q] + 2*D*K*Dh [k,v] + H*Dh*D [o] + 3*D*F [gate, up, down])
    N_head   = D * V (untied LM head; the embedding lookup is not a matmul)
    forward  = 2*N_layers*tokens + 2*N_head*head_tokens + attention
    attention (per forward) = rows * L * 4 * T^2 * H*Dh  (QK^T and AV over the full T x T square,
               the non-causal convention, which is also what XLA's attention executes)
    step     = 3 * forward(policy) [fwd + bwd = 2x fwd] + 1 * forward(reference)
    head_tokens: "issue" formula = every token (rows*T); "all" = rows*(T-1) positions that have a
    next-token target (what head=all computes); "response" = rows*response (only the scored
    positions, what head=scored, the library's default, computes).
    """
    L, D, F, V = hf["num_hidden_layers"], hf["hidden_size"], hf["intermediate_size"], hf["vocab_size"]
    H, K = hf["num_attention_heads"], hf["num_key_value_heads"]
    Dh = hf.get("head_dim") or D // H
    rows, T = 2 * pairs, prompt + response
    n_layers = L * (D * H * Dh + 2 * D * K * Dh + H * Dh * D + 3 * D * F)
    n_head = D * V
    attn = rows * L * 4 * T * T * H * Dh
    tokens = rows * T

    def step(head_tokens, ref=True):
        fwd = 2 * n_layers * tokens + 2 * n_head * head_tokens + attn
        return 3 * fwd + (fwd if ref else 0)

    return {
        "n_layers": n_layers, "n_head": n_head, "tokens": tokens, "attn_fwd": attn,
        "issue": step(tokens), "all": step(rows * (T - 1)), "response": step(rows * response),
        "all_noref": step(rows * (T - 1), False), "response_noref": step(rows * response, False),
    }


def variant_flops(fl: dict, v: dict) -> float:
    return fl["response" if v["ref"] == "model" else "response_noref"]


# ------------------------------------------------------------------------------------- matmul peak
def matmul_peak(n: int, reps: int) -> float:
    """Best float32 FLOP/s of a jitted ``[n,n] @ [n,n]`` (3 calls per timing, best of ``reps``)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(3):
            f(a, b).block_until_ready()
        best = min(best, (time.perf_counter() - t) / 3)
    return 2 * n**3 / best


def torch_matmul_peak(n: int, reps: int) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(3):
            a @ b
        best = min(best, (time.perf_counter() - t) / 3)
    return 2 * n**3 / best


# --------------------------------------------------------------------------------- jaxalign child
def make_batch(pairs, prompt, response, vocab, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    T = prompt + response
    batch = {}
    prompts = rng.integers(3, vocab, (pairs, prompt))
    for side in ("chosen", "rejected"):
        ids = np.concatenate([prompts, rng.integers(3, vocab, (pairs, response))], axis=1).astype(np.int32)
        batch[f"{side}_input_ids"] = ids
        batch[f"{side}_loss_mask"] = np.concatenate(
            [np.zeros((pairs, prompt), np.int32), np.ones((pairs, response), np.int32)], axis=1)
        batch[f"{side}_positions"] = np.broadcast_to(np.arange(T, dtype=np.int32), (pairs, T)).copy()
        batch[f"{side}_segment_ids"] = np.ones((pairs, T), np.int32)
    batch["example_mask"] = np.ones((pairs, 1), np.int32)
    return batch


def run_jaxalign(args, v: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxalign.config.schema import LossConfig, OptimizerConfig
    from jaxalign.models import ModelConfig, init_model
    try:
        from jaxalign.objectives import ObjectiveContext, get_objective
    except ImportError:  # a `src=` revision from before the objective specs (jaxalign/objectives/)
        from jaxalign.train.objectives import ObjectiveContext, get_objective
    from jaxalign.train.optimizer import build_optimizer
    from jaxalign.train.step import GraphDefs, make_loss_fn, make_train_step

    cfg = ModelConfig.from_hf_dict(hf_config())
    options = {"remat": v["remat"]}
    if (v["layers"], v["attn"]) != (SHIPPED["layers"], SHIPPED["attn"]):  # an older revision may lack the keys
        options.update(layer_loop=v["layers"], attention=v["attn"])
    model = init_model(cfg, **options)
    graphdef, params = nnx.split(model)
    batch = make_batch(args.pairs, args.prompt_len, args.response_len, cfg.vocab_size)
    if v["ref"] == "cached":
        frozen = {}
        graphdefs = GraphDefs(policy=graphdef)
        # What jaxalign's score stage would have written: the (initial) policy's own log-probs.
        batch["ref_chosen_logps"] = np.zeros((args.pairs, 1), np.float32)
        batch["ref_rejected_logps"] = np.zeros((args.pairs, 1), np.float32)
    else:
        frozen = {"reference": jax.tree.map(jnp.copy, params)}
        graphdefs = GraphDefs(policy=graphdef, reference=graphdef)
    ctx = ObjectiveContext(LossConfig(name="dpo", chunk_size=int(v["chunk"])))
    loss_fn = make_loss_fn(get_objective("dpo"), ctx, graphdefs)
    tx, schedule = build_optimizer(OptimizerConfig(lr=1e-5), 100, params)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": jax.jit(tx.init)(params),
             "rng": jax.random.key_data(jax.random.key(0))}
    step = make_train_step(loss_fn, tx, schedule, state_shardings=jax.tree.map(lambda x: x.sharding, state))
    batch = jax.tree.map(jnp.asarray, batch)

    t = time.perf_counter()
    lowered = step.lower(state, frozen, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()
    temp_mb = mem.temp_size_in_bytes / 2**20 if mem is not None else float("nan")

    times, losses = [], []
    for _ in range(args.warmup + args.steps):
        t = time.perf_counter()
        state, metrics = compiled(state, frozen, batch)
        losses.append(float(metrics["loss"]))  # blocks
        times.append(time.perf_counter() - t)
    return {"compile_s": compile_s, "step_times": times, "losses": losses, "temp_mb": temp_mb,
            "peak_rss_mb": max_rss_mb(), "jax": jax.__version__}


# ------------------------------------------------------------------------------------ torch child
def torch_model(hf: dict):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**{k: v for k, v in hf.items() if k not in ("architectures", "model_type")},
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).float()


def run_torch(args) -> dict:
    """Plain loop: policy + reference forward (full logits), sigmoid DPO loss, AdamW step."""
    import copy

    import numpy as np
    import torch
    import torch.nn.functional as F

    hf = hf_config()
    model = torch_model(hf).train()
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    b = make_batch(args.pairs, args.prompt_len, args.response_len, hf["vocab_size"])
    ids = torch.from_numpy(np.concatenate([b["chosen_input_ids"], b["rejected_input_ids"]])).long()
    mask = torch.from_numpy(np.concatenate([b["chosen_loss_mask"], b["rejected_loss_mask"]]))[:, 1:].float()

    def seq_logps(m):
        logits = m(input_ids=ids, use_cache=False).logits[:, :-1]
        lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        return (lp * mask).sum(-1)

    times, losses = [], []
    for _ in range(args.warmup + args.steps):
        t = time.perf_counter()
        pol = seq_logps(model)
        with torch.no_grad():
            rf = seq_logps(ref)
        pc, pr = pol.chunk(2)
        rc, rr = rf.chunk(2)
        loss = -F.logsigmoid(0.1 * ((pc - pr) - (rc - rr))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        times.append(time.perf_counter() - t)
    return {"step_times": times, "losses": losses, "peak_rss_mb": max_rss_mb(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "torch_matmul_peak": torch_matmul_peak(args.peak_size, 3)}


# -------------------------------------------------------------------------------------- TRL child
def word_tokenizer(vocab_size: int):
    """A WordLevel tokenizer: ids 0-3 are <pad> <s> </s> <unk>, id i >= 4 is the word ``w{i}``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": []})
    return fast


def run_trl(args) -> dict:
    import copy

    import numpy as np
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    hf = hf_config()
    V = hf["vocab_size"]
    tok = word_tokenizer(V)
    n_steps = args.warmup + args.steps
    rng = np.random.default_rng(0)

    def words(n):
        return " ".join(f"w{i}" for i in rng.integers(4, V, n))

    n = args.pairs * n_steps
    # TRL appends EOS to each response: response_len - 1 words + </s> = response_len tokens.
    data = {"prompt": [words(args.prompt_len) for _ in range(n)],
            "chosen": [" " + words(args.response_len - 1) for _ in range(n)],
            "rejected": [" " + words(args.response_len - 1) for _ in range(n)]}
    enc = tok(data["prompt"][0] + data["chosen"][0] + tok.eos_token)["input_ids"]
    assert len(enc) == args.prompt_len + args.response_len and enc[-1] == 2, len(enc)

    model = torch_model(hf)
    ref = copy.deepcopy(model)

    class Timer(TrainerCallback):
        times: list = []

        def on_step_begin(self, a, s, c, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):
            self.times.append(time.perf_counter() - self.t)

    timer = Timer()
    out = tempfile.mkdtemp()
    cfg = DPOConfig(output_dir=out, per_device_train_batch_size=args.pairs, max_length=args.prompt_len + args.response_len,
                    bf16=False, report_to=[], logging_steps=1, max_steps=n_steps, learning_rate=1e-5,
                    save_strategy="no", use_cpu=True, disable_tqdm=True, beta=0.1, loss_type=["sigmoid"],
                    gradient_checkpointing=args.variant[0] != "nogc", dataloader_num_workers=0, seed=0)
    trainer = DPOTrainer(model=model, ref_model=ref, args=cfg, train_dataset=Dataset.from_dict(data),
                         processing_class=tok, callbacks=[timer])
    sample = trainer.train_dataset[0]
    lens = (len(sample["prompt_ids"]), len(sample["chosen_ids"]), len(sample["rejected_ids"]))
    t = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_times": timer.times, "losses": losses, "train_s": total, "lengths": lens,
            "peak_rss_mb": max_rss_mb(), "trl": trl.__version__, "torch": torch.__version__,
            "gradient_checkpointing": cfg.gradient_checkpointing}


# ---------------------------------------------------------------------------------------- parent
def child(args, kind: str, variant: str = "", xla: str = "", src: str = "") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--pairs", str(args.pairs),
           "--prompt-len", str(args.prompt_len), "--response-len", str(args.response_len),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--peak-size", str(args.peak_size)]
    if variant:
        cmd += ["--variant", variant]
    env = dict(os.environ)
    if xla:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla).strip()
    if src:
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    print(f"  running {kind} {variant} {('XLA_FLAGS=' + env['XLA_FLAGS']) if xla else ''}".rstrip(), flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        tail = (res.stderr or res.stdout)[-3000:]
        print(f"  {kind} {variant} FAILED (exit {res.returncode}):\n{tail}", flush=True)
        return {"error": tail.strip().splitlines()[-1] if tail.strip() else f"exit {res.returncode}"}
    return json.loads(lines[-1])


def steady(times: list, warmup: int) -> float:
    """Median of the steady-state steps (after ``warmup``)."""
    return statistics.median(times[warmup:] or times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--variant", action="append", help="jaxalign variant (repeatable; default: shipped; 'none' for no jaxalign run)")
    p.add_argument("--torch", action="store_true", help="also time a plain PyTorch DPO loop")
    p.add_argument("--trl", action="store_true", help="also time trl.DPOTrainer (if trl is installed)")
    p.add_argument("--trl-no-gc", action="store_true",
                   help="also time TRL with gradient_checkpointing=False (TRL's default, timed by --trl, is True)")
    p.add_argument("--preset", default=PRESET, help="model preset (the issue's setup is the default; others for smoke tests)")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--response-len", type=int, default=192)
    p.add_argument("--steps", type=int, default=3, help="timed steady-state steps (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--peak-size", type=int, default=2048)
    p.add_argument("--peak-reps", type=int, default=5)
    p.add_argument("--json", default="", help="write all results here")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args()

    os.environ["JAXALIGN_BENCH_PRESET"] = args.preset  # children inherit it
    if args.child:
        if args.child == "jax":
            _, v = parse_variant(args.variant[0])
            r = run_jaxalign(args, v)
        elif args.child == "torch":
            r = run_torch(args)
        else:
            r = run_trl(args)
        print(json.dumps(r))
        return

    variants = [] if args.variant == ["none"] else [parse_variant(s) for s in (args.variant or ["shipped"])]
    hf = hf_config()
    fl = flop_counts(hf, args.pairs, args.prompt_len, args.response_len)
    rows, T = 2 * args.pairs, args.prompt_len + args.response_len
    tokens = rows * T
    print(f"{args.preset} float32; {args.pairs} pairs x {T} tokens (prompt {args.prompt_len}, response {args.response_len}); "
          f"DPO sigmoid, reference forward in the step, AdamW")
    print(f"FLOPs/step: N_layers={fl['n_layers']:,} N_head={fl['n_head']:,} tokens={tokens} "
          f"attention fwd={fl['attn_fwd'] / 1e9:.2f} GF")
    print("  forward = 2*N_layers*tokens + 2*N_head*head_tokens + rows*L*4*T^2*H*Dh; step = 3*fwd(policy) + fwd(reference)")
    print(f"  issue formula (head on all {tokens} tokens): {fl['issue'] / 1e9:.1f} GF; head on the {rows * (T - 1)} "
          f"positions with a target: {fl['all'] / 1e9:.1f} GF; head on the {rows * args.response_len} scored positions: "
          f"{fl['response'] / 1e9:.1f} GF")

    import jax

    print(f"jax {jax.__version__}, devices {jax.devices()}, {os.cpu_count()} CPUs; load average "
          f"{tuple(round(x, 2) for x in os.getloadavg())}")

    def peak():
        value = matmul_peak(args.peak_size, args.peak_reps)
        print(f"  matmul peak (jnp {args.peak_size}^3 float32, best of {args.peak_reps}): {value / 1e9:.1f} GFLOP/s; "
              f"load average {tuple(round(x, 2) for x in os.getloadavg())}", flush=True)
        return value

    runs, seen = [], {}
    for name, v in variants:
        seen[name] = seen.get(name, 0) + 1
        runs.append((name if seen[name] == 1 else f"{name} #{seen[name]}", "jax", name, v["xla"], v))
    if args.torch:
        runs.append(("torch loop", "torch", "", "", None))
    if args.trl or args.trl_no_gc:
        try:
            import trl  # noqa: F401

            if args.trl:
                runs.append(("TRL DPOTrainer", "trl", "gc", "", None))
            if args.trl_no_gc:
                runs.append(("TRL DPOTrainer (no grad ckpt)", "trl", "nogc", "", None))
        except ImportError:
            print("  trl is not installed: skipping the TRL run")

    results, peaks = {}, [peak()]
    for name, kind, variant, xla, v in runs:
        r = child(args, kind, variant, xla, v["src"] if v else "")
        peaks.append(peak())
        r["variant"], r["peak"] = v, max(peaks[-2:])  # the better of the peaks measured just before and after
        results[name] = r
        if "step_times" in r:
            print(f"  -> {name}: {steady(r['step_times'], args.warmup):.2f} s/step (steps {[round(x, 2) for x in r['step_times']]})",
                  flush=True)

    # ------------------------------------------------------------------ table
    base = {k: steady(r["step_times"], args.warmup) for k, r in results.items() if "step_times" in r}
    trl_s, trl_nogc_s = base.get("TRL DPOTrainer"), base.get("TRL DPOTrainer (no grad ckpt)")
    torch_s = base.get("torch loop")
    best = max(peaks)
    print()
    hdr = (f"{'run':<30} {'s/step':>7} {'tok/s':>6} {'compile':>7} {'GF/s':>5} {'%peak':>6} {'GF/s*':>5} {'%peak*':>6} "
           f"{'peak':>5} {'RSS MB':>6} {'temp MB':>7} {'vs TRL':>6} {'vs TRL-nogc':>11} {'vs torch':>8}")
    print(hdr)
    print("-" * len(hdr))
    for name, r in results.items():
        if name not in base:
            print(f"{name:<30} error: {r.get('error')}")
            continue
        s, pk = base[name], r["peak"]
        flops = variant_flops(fl, r["variant"]) if r["variant"] else fl["all"]
        comp = f"{r['compile_s']:.1f}s" if "compile_s" in r else "-"
        temp = f"{r['temp_mb']:.0f}" if "temp_mb" in r else "-"
        ratio = lambda ref: f"{ref / s:.2f}x" if ref else "-"  # noqa: E731
        print(f"{name[:30]:<30} {s:7.2f} {tokens / s:6.0f} {comp:>7} {flops / s / 1e9:5.1f} {100 * flops / s / pk:5.1f}% "
              f"{fl['issue'] / s / 1e9:5.1f} {100 * fl['issue'] / s / pk:5.1f}% {pk / 1e9:5.1f} {r['peak_rss_mb']:6.0f} "
              f"{temp:>7} {ratio(trl_s):>6} {ratio(trl_nogc_s):>11} {ratio(torch_s):>8}")
    print()
    print("s/step: median of the timed steps after warm-up; tok/s: chosen + rejected tokens per second; compile: "
          "lower + compile of the jitted step; temp MB: compiled.memory_analysis() temp size; RSS: the run's "
          "process max RSS.")
    print("GF/s, %peak: FLOPs the run's math needs (LM head on all positions with a target, or only on the scored "
          "ones for head=scored; no reference forward for ref=cached), rematerialisation never counted.")
    print("GF/s*, %peak*: the issue's formula (LM head on every token) / time: throughput in FLOP/s units, comparable "
          "across runs.")
    print(f"peak: jnp {args.peak_size}^3 float32 matmul GFLOP/s, the better of the measurements just before and after "
          f"the run (best of the whole run: {best / 1e9:.1f}; all: {[round(x / 1e9, 1) for x in peaks]}).")
    for name, r in results.items():
        extra = {k: r[k] for k in ("losses", "step_times", "lengths", "gradient_checkpointing", "torch_matmul_peak",
                                   "train_s") if k in r}
        if "torch_matmul_peak" in extra:
            extra["torch_matmul_peak"] = f"{extra['torch_matmul_peak'] / 1e9:.1f} GFLOP/s"
        print(f"  {name}: " + ", ".join(f"{k}={[round(x, 3) for x in v] if isinstance(v, list) else v}" for k, v in extra.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peaks": peaks, "flops": fl, "results": results}, f, indent=1)

if __name__ == "__main__":
    main()
