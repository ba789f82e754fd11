"""docs/scale.md's table: `jaxalign plan` for the daDPO paper's two setups, teacher in the step or cached,
on 8, 16 and 32 devices.

    python benchmarks/scale_table.py [--devices 8 16 32] [--flops-devices 8] [--out benchmarks/scale_table.json]

Each row is one `jaxalign plan ... --json` subprocess (the device count is fixed when jax starts).
Rows are saved to ``--out`` as they finish and a rerun skips the rows already there (delete the file,
or pass ``--redo``, to plan again), so the table can be built across sessions. Prints the markdown
table of docs/scale.md from whatever rows exist, with each row's wall-clock plan time and the load
average it ran under (the development machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from jaxalign.io.atomic import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ROOT / "benchmarks" / "shapes"
GIB = 2**30

#: (label, student config folder, teacher config folder)
SETUPS = (
    ("Vicuna-1.5-7B −20% / Llama-2-7B", "llama-2-7b-pruned-26", "llama-2-7b"),
    ("Qwen2.5-1.5B / Qwen2.5-7B", "qwen2.5-1.5b", "qwen2.5-7b"),
)
#: The Zephyr dDPO recipe's scale, as the issue asks.
RECIPE_OVERRIDES = ("data.batch_size=128", "data.max_length=1024", "data.max_prompt_length=512",
                    "mesh.data=1", "mesh.fsdp=-1")


def row_key(setup: str, cached: bool, devices: int) -> str:
    return f"{setup} | {'cached' if cached else 'in the step'} | {devices}"


def plan_row(student: str, teacher: str, cached: bool, devices: int, flops: bool, budget_gb: float) -> dict:
    cmd = [str(Path(sys.executable).with_name("jaxalign")), "plan", "configs/dadpo.yaml", f"model.path={SHAPES / student}",
           f"teacher.path={SHAPES / teacher}", *RECIPE_OVERRIDES, "--devices", str(devices),
           "--memory-gb", str(budget_gb), "--json"]
    if cached:
        cmd += ["--cached", "teacher"]
    if not flops:
        cmd.append("--no-flops")
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"plan failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    plan = json.loads(done.stdout[done.stdout.index("{"):])
    return {"plan": plan, "wall_seconds": wall, "load_average": [load_before, os.getloadavg()[0]]}


def markdown(rows: dict) -> str:
    head = ("| student / teacher | teacher | devices | params | optimizer | frozen | temp | **total** | "
            "FLOPs/step XLA / analytic | plan wall (load) | advice at `--memory-gb 80` |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    order = [row_key(label, cached, n) for label, _, _ in SETUPS for cached in (False, True)
             for n in sorted({int(k.rsplit(" | ", 1)[1]) for k in rows})]
    for key in (k for k in order if k in rows):
        r = rows[key]
        setup, where, devices = key.split(" | ")
        p = r["plan"]
        per = {k: v / GIB for k, v in p["per_device_bytes"].items()}
        flops = p["flops_per_step"]
        f = (f"{flops:.3g} / {p['flops_analytic']:.3g}" if isinstance(flops, float) and flops == flops
             else "same as 8")
        advice = "; ".join(s.split(":")[0] for s in p.get("suggestions", [])) or "fits"
        lines.append(f"| {setup} | {where} | {devices} | {per['params']:.2f} | {per['optimizer']:.2f} | "
                     f"{per['frozen']:.2f} | {per['temp']:.1f} | **{per['total']:.1f}** | {f} | "
                     f"{r['wall_seconds']:.0f} s ({r['load_average'][0]:.1f}) | {advice} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--flops-devices", type=int, nargs="*", default=[8],
                    help="device counts whose rows also run the FLOPs compiles (FLOPs do not depend on N)")
    ap.add_argument("--memory-gb", type=float, default=80.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "scale_table.json")
    ap.add_argument("--redo", action="store_true", help="plan every row again")
    args = ap.parse_args()
    rows = {} if args.redo or not args.out.exists() else json.loads(args.out.read_text())
    for label, student, teacher in SETUPS:
        for cached in (False, True):
            for devices in args.devices:
                key = row_key(label, cached, devices)
                if key in rows:
                    continue
                print(f"planning {key} ...", flush=True)
                rows[key] = plan_row(student, teacher, cached, devices, devices in args.flops_devices,
                                     args.memory_gb)
                write_json_atomic(args.out, rows, indent=1, sort_keys=True, default=str)
                print(f"  {rows[key]['wall_seconds']:.0f} s, total "
                      f"{rows[key]['plan']['per_device_bytes']['total'] / GIB:.1f} GiB", flush=True)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
