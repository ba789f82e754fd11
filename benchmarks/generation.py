"""Sampling throughput of the KV-cache sampler on the real SmolLM2-135M-Instruct (the main job's teacher).

    python benchmarks/generation.py [--batch 1 16] [--new-tokens 8 64] [--temperature 0.7] [--dtype float32]

Per batch size, the first ``B`` held-out prompts of the shipped set go through the chat template; EOS is disabled
so every row samples exactly ``N`` tokens. Each length runs twice: the first call includes compilation
(one per cache-size bucket), the second is the steady figure. The gap between a short and a long
length is the decode cost alone (the short one is mostly prefill).
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[16], help="batch sizes")
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    from jaxalign.generation.sampler import SamplingParams, encode_prompts, generate_ids
    from jaxalign.models import load_model, load_tokenizer
    from jaxalign.models.resolve import resolve_model_path

    path = resolve_model_path("bundled:smollm2-135m-instruct")
    model, tokenizer = load_model(path, dtype=args.dtype), load_tokenizer(path)
    assets = os.path.join(os.path.dirname(__file__), "..", "jaxalign", "pipeline", "assets", "prompts_heldout.jsonl")
    with open(assets) as f:
        prompts = [json.loads(line)["prompt"] for line in f]
    if max(args.batch) > len(prompts):
        raise SystemExit(f"--batch {max(args.batch)}: the held-out set has only {len(prompts)} prompts")
    sampling = SamplingParams(args.temperature, 0, args.top_p)
    for batch in args.batch:
        ids = encode_prompts(tokenizer, prompts[:batch], chat_template=True)
        print(f"SmolLM2-135M-Instruct {args.dtype}, batch {batch}, prompt tokens {min(map(len, ids))}-"
              f"{max(map(len, ids))}, temperature {args.temperature}, top_p {args.top_p}, EOS off", flush=True)
        steady = {}
        for n in args.new_tokens:
            times = []
            for _ in range(2):
                start = time.perf_counter()
                out = generate_ids(model, ids, max_new_tokens=n, sampling=sampling, seed=0, eos_token_ids=())
                times.append(time.perf_counter() - start)
            tokens = sum(map(len, out))
            steady[n] = (times[1], tokens)
            print(f"  new tokens {n:4d}: first call {times[0]:6.1f} s (with compile), steady {times[1]:6.1f} s, "
                  f"{tokens} tokens -> {tokens / times[1]:7.1f} tokens/s", flush=True)
        if len(steady) >= 2:
            (lo, (t_lo, k_lo)), (hi, (t_hi, k_hi)) = min(steady.items()), max(steady.items())
            if t_hi > t_lo:
                print(f"  decode only ({lo} -> {hi} new tokens): {(t_hi - t_lo) / (hi - lo):.3f} s per step, "
                      f"{(k_hi - k_lo) / (t_hi - t_lo):.1f} tokens/s")


if __name__ == "__main__":
    main()
