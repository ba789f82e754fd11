#!/usr/bin/env bash
# Run one jaxalign command as N cooperating processes on this machine, each with D
# (virtual CPU or visible) devices, through jax.distributed on localhost.
#   launch/local_multiprocess.sh 2 4 jaxalign train configs/dpo.yaml data.path=prefs.jsonl
# Every process runs the same command; process 0 writes logs and exports (for generate and
# score: each process writes its rows to <output>.part-P-of-N.jsonl, process 0 merges them).
# SIGTERM/SIGINT are forwarded to every process (a stage stops at a batch all agree on and exits 0;
# rerun the same command, with any process count, to continue); the exit status is the first failure's.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS COMMAND [ARGS...]" >&2
  exit 2
fi
nproc_=$1; ndev=$2; shift 2
port=${JAXALIGN_PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < nproc_; i++)); do
  JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$nproc_ JAX_PROCESS_ID=$i \
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$ndev" \
    "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM
trap 'kill -INT "${pids[@]}" 2>/dev/null || true' INT
status=0
for pid in "${pids[@]}"; do
  while true; do
    rc=0
    wait "$pid" || rc=$?
    # a trapped signal also ends `wait` (status > 128) while the process still runs: wait again
    if [ $rc -gt 128 ] && kill -0 "$pid" 2>/dev/null; then continue; fi
    break
  done
  if [ $rc -ne 0 ] && [ $status -eq 0 ]; then status=$rc; fi
done
exit $status
