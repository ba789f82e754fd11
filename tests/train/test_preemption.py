"""PreemptionGuard: signals become a flag; a SIGTERMed training script saves, exits 0 and resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from jaxalign.train.preemption import PreemptionGuard


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_sigterm_sets_flag_and_handlers_are_restored():
    before_term, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with PreemptionGuard() as guard:
        assert not guard.requested and guard.signal_name is None and not guard.should_stop(0)
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_for(lambda: guard.requested)  # ...and we are still alive
        assert guard.signal_name == "SIGTERM"
        assert guard.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM is only logged
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is before_term
    assert signal.getsignal(signal.SIGINT) is before_int


def test_second_sigint_raises_keyboard_interrupt():
    # Python's own handler, whatever this process inherited (a background job starts with SIGINT ignored)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGINT)
            assert _wait_for(lambda: guard.requested)
            assert guard.signal_name == "SIGINT"
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1.0)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_ignored_signals_stay_ignored_and_manual_request():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with PreemptionGuard() as guard:
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            guard.request("budget")
            assert guard.requested and guard.signal_name == "budget"
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_main_thread_only():
    errors = []

    def enter():
        try:
            with PreemptionGuard():
                pass
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=enter)
    t.start()
    t.join()
    assert errors and "main thread" in str(errors[0])


_STEP = textwrap.dedent('''
    import jax, jax.numpy as jnp

    def init_state():
        return {"counter": jnp.zeros((), jnp.int32), "acc": jnp.zeros((4,), jnp.float32), "key": jax.random.key(0)}

    @jax.jit
    def train_step(state):
        key, sub = jax.random.split(state["key"])
        noise = jax.random.uniform(sub, (4,))
        return {"counter": state["counter"] + 1, "acc": state["acc"] * 0.5 + noise, "key": key}

    def summary(state):
        return {"counter": int(state["counter"]), "acc": state["acc"].tolist(),
                "key": jax.random.key_data(state["key"]).tolist()}
''')

_SCRIPT = _STEP + textwrap.dedent('''
    # A stand-in training loop: periodic checkpoints, save-and-exit-0 on SIGTERM, resume on restart.
    import importlib.util, json, sys, time, types
    # Skip jaxalign/__init__'s eager model imports (flax, ...): ~1-2 s per process on a small CI box.
    _pkg = types.ModuleType("jaxalign")
    _pkg.__path__ = list(importlib.util.find_spec("jaxalign").submodule_search_locations)
    sys.modules.setdefault("jaxalign", _pkg)
    from jaxalign.train.checkpointing import Checkpointer
    from jaxalign.train.preemption import PreemptionGuard

    ckpt_dir, total, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    state, step = init_state(), 0
    ckpt = Checkpointer(ckpt_dir, keep=2, save_every=5)
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(abstract_state=jax.eval_shape(init_state))
        step = meta["step"]
        print(f"resumed {step}", flush=True)
    with PreemptionGuard() as guard:
        while step < total:
            state = train_step(state)
            step += 1
            print(f"step {step}", flush=True)
            ckpt.save(step, state, {"step": step})
            if guard.should_stop(step):
                ckpt.save(step, state, {"step": step}, force=True)
                ckpt.wait()
                ckpt.close()
                print(f"preempted {step} by {guard.signal_name}", flush=True)
                sys.exit(0)
            time.sleep(pause)
    ckpt.close()
    print("final " + json.dumps(summary(state)), flush=True)
''')


def _steps(output: str) -> list[int]:
    return [int(line.split()[1]) for line in output.splitlines() if line.startswith("step ")]


def _uninterrupted(total: int) -> dict:
    """The same loop run straight through in this process, no checkpoints."""
    scope: dict = {}
    exec(_STEP, scope)
    state = scope["init_state"]()
    for _ in range(total):
        state = scope["train_step"](state)
    return scope["summary"](state)


def test_sigterm_saves_exits_zero_and_resumes_exactly(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    total = 40
    victim = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(total), "0.1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    for line in victim.stdout:
        seen.append(line)
        if line.strip() == "step 7":
            victim.send_signal(signal.SIGTERM)
            break
    rest, _ = victim.communicate(timeout=60)
    out = "".join(seen) + rest
    assert victim.returncode == 0, out
    preempted = [line for line in out.splitlines() if line.startswith("preempted ")]
    assert preempted and preempted[0].endswith("by SIGTERM"), out
    stopped_at = int(preempted[0].split()[1])
    assert 7 <= stopped_at < total, out
    assert _steps(out) == list(range(1, stopped_at + 1))
    assert "final " not in out

    resumed = subprocess.run([sys.executable, str(script), str(tmp_path), str(total), "0"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed {stopped_at}" in resumed.stdout
    assert _steps(resumed.stdout) == list(range(stopped_at + 1, total + 1))  # continues, repeats nothing
    final = [line for line in resumed.stdout.splitlines() if line.startswith("final ")]
    assert final, resumed.stdout
    assert json.loads(final[0][len("final "):]) == _uninterrupted(total)
