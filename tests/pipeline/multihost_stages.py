"""Run jaxalign commands one after another in one process: the multi-host tests launch it per process.

    python tests/pipeline/multihost_stages.py PAUSE train ARGS... ::: generate ARGS... ::: score ARGS...

Each command is ``jaxalign COMMAND ARGS`` (the CLI's ``main``; the stages join ``jax.distributed`` from
the ``JAX_*`` environment). After every batch a stage writes it prints ``wrote N <file name>`` and sleeps
PAUSE seconds, so a test can signal a run while batches remain.
"""

import sys
import time

from jaxalign.pipeline import rows

_write = rows.RowWriter.write


def _write_and_report(self, batch):
    _write(self, batch)
    if batch:
        print(f"wrote {self.rows_done} {self.stream.name}", flush=True)
        time.sleep(PAUSE)


if __name__ == "__main__":
    PAUSE = float(sys.argv[1])
    rows.RowWriter.write = _write_and_report
    from jaxalign.cli.main import main

    commands, current = [], []
    for arg in sys.argv[2:]:
        if arg == ":::":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    commands.append(current)
    for command in commands:
        code = main(command)
        if code:
            sys.exit(code)
