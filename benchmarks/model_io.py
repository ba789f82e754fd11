"""Model-layer figures for SmolLM2-135M-Instruct: GGUF import time, load time, peak host memory.

    python benchmarks/model_io.py [--hf-dir DIR]

(Sampling throughput: ``benchmarks/generation.py``.)

Each load is measured in a fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOAD_PROBE = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp, numpy as np
from jaxalign.models import load_pretrained
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
model, tok = load_pretrained(sys.argv[1], dtype=sys.argv[2])
jax.block_until_ready(model.layers.q_proj[...])
load_s = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"load_s": load_s, "rss_before_mb": base / 1024, "peak_rss_mb": peak / 1024,
                  "params": model.config.num_params()}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hf-dir", default="", help="an already imported HF folder (default: import the GGUF)")
    args = parser.parse_args()

    from jaxalign.models.bundled import smollm2_gguf_path
    from jaxalign.models.gguf_import import gguf_to_hf

    hf_dir = Path(args.hf_dir) if args.hf_dir else Path(tempfile.mkdtemp()) / "smollm2"
    if not args.hf_dir:
        t = time.perf_counter()
        gguf_to_hf(smollm2_gguf_path(), hf_dir, dtype="float32")
        print(f"GGUF import (dequantise + tokenizer + write): {time.perf_counter() - t:.1f} s")

    for dtype in ("float32", "bfloat16"):
        out = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(hf_dir), dtype], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        weights_mb = r["params"] * (4 if dtype == "float32" else 2) / 2**20
        print(f"load_pretrained {dtype}: {r['load_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(after imports {r['rss_before_mb']:.0f} MB; weights {weights_mb:.0f} MB; "
              f"load added {r['peak_rss_mb'] - r['rss_before_mb']:.0f} MB = "
              f"{(r['peak_rss_mb'] - r['rss_before_mb']) / weights_mb:.2f}x the weights)")


if __name__ == "__main__":
    main()
