"""Plan memory and FLOPs before renting accelerators: `jaxalign plan configs/dadpo.yaml mesh.fsdp=8 --devices 8`.

Compiles the recipe's train step ahead of time for a mesh of N devices from the models' config.json
files alone (abstract arrays, no weights) and prints per-device parameter, optimizer-state,
frozen-model (reference, teacher), batch (with `loss.kd_cache`: the cached top-k arrays) and XLA temp bytes
with their total, and the step's FLOPs. On a
CPU-only machine the command makes N virtual CPU devices before jax starts. Over `--memory-gb` it
lists what would fit. See `jaxalign.train.plan` and docs/scale.md.
"""

from __future__ import annotations

import json

from jaxalign.cli._stage import add_config_args, split_args

HELP = "compile a recipe's train step for N devices from config.json files and print memory per device and FLOPs"


def add_parser(p):
    add_config_args(p)
    p.add_argument("--devices", type=int, required=True, metavar="N", help="devices of the mesh to plan for")
    p.add_argument("--memory-gb", type=float, default=None, metavar="G",
                   help="per-device memory budget in GiB; over it, the plan suggests what would fit")
    p.add_argument("--cached", action="append", default=[], choices=["reference", "teacher"],
                   help="plan as if this model's log-probs were precomputed by `jaxalign score` (repeatable)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOPs compiles (memory only)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def ensure_cpu_devices(n: int) -> None:
    """Ask for ``n`` virtual CPU devices if jax has not started its backends yet (else keep what exists)."""
    import jax
    from jax._src import xla_bridge

    if n < 1:
        raise ValueError(f"plan --devices {n}: must be at least 1")
    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_num_cpu_devices", max(n, 1))


def run(args) -> int:
    ensure_cpu_devices(args.devices)
    from jaxalign.config import load_config
    from jaxalign.train.plan import GIB, format_plan, plan_train, suggest

    path, overrides = split_args(args)
    config = load_config(path, overrides)
    plan = plan_train(config, devices=args.devices, cached=tuple(args.cached), flops=not args.no_flops)
    if args.memory_gb is not None:
        plan.suggestions = suggest(plan, args.memory_gb * GIB)
    print(json.dumps(plan.to_json(), indent=1) if args.json else format_plan(plan, args.memory_gb))
    return 0
