#!/usr/bin/env bash
# Run the same jaxalign command on every worker of a Cloud TPU VM pod.
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a launch/tpu_pod.sh train configs/dadpo.yaml mesh.fsdp=8
# Each worker needs the repository at $REPO_DIR (default ~/jaxalign) with `make install` done
# (use PIP_EXTRA="jax[tpu]" to add the TPU runtime). jax.distributed.initialize() finds the
# other workers by itself (mesh.multihost=auto); every worker reads only its slice of the data.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR=${REPO_DIR:-'~/jaxalign'}
if [ $# -lt 1 ]; then
  echo "usage: TPU_NAME=... ZONE=... $0 COMMAND [ARGS...]   (COMMAND is a jaxalign subcommand)" >&2
  exit 2
fi
args=$(printf '%q ' "$@")
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
  --command "cd $REPO_DIR && .venv/bin/jaxalign $args"
