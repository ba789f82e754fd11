"""What every model family must show, as reusable checks (used by `test_family_*.py`).

A tiny random checkpoint is made by `transformers` itself (every weight and norm perturbed, so a
wrong (1 + w) or a missed norm shows), then: logits within 1e-4 of transformers in float32 on
sequences longer than any sliding window; saving back gives bitwise-identical tensors that
transformers loads; greedy KV-cache generation equals step-by-step argmax of the full forward;
one DPO train step runs from ln 2 and moves the policy.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

from jaxalign.models import load_model, save_pretrained


def make_hf_checkpoint(folder: Path, config_class: str, seed: int = 0, scale: float = 0.05, **config) -> Path:
    """Save a randomly initialised transformers model of `config_class(**config)` with every
    parameter perturbed by `scale * N(0, 1)`; returns the folder."""
    torch.manual_seed(seed)
    cfg = getattr(transformers, config_class)(**config)
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    model.save_pretrained(str(folder))
    return folder


def hf_model(folder: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32,
                                                              attn_implementation="eager")
    return model.eval()


def random_ids(vocab: int, batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (batch, length)).astype(np.int32)


def compiled_forward(model):
    """`ids [B,T] -> logits [B,T,V]`, jitted once per shape (an eager call compiles op by op)."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids))
    return lambda ids: forward(state, jnp.asarray(ids, jnp.int32))


def check_logits_match_transformers(folder: Path, length: int, atol: float = 1e-4, **load_kwargs):
    """jaxalign float32 logits equal transformers' within `atol` on random ids `[2, length]`."""
    model = load_model(folder, **load_kwargs)
    ids = random_ids(model.config.vocab_size, 2, length)
    ours = np.asarray(compiled_forward(model)(ids))
    with torch.no_grad():
        theirs = hf_model(folder)(torch.from_numpy(ids).long()).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=0)
    return model


def check_save_round_trip(folder: Path, out: Path):
    """Saving the loaded model gives bitwise-identical tensors (same names) that transformers loads."""
    model = load_model(folder)
    save_pretrained(model, None, out)
    want, got = _tensors(folder), _tensors(out)
    assert sorted(got) == sorted(want), (sorted(set(want) ^ set(got)))[:10]
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        assert np.array_equal(got[name], value), f"{name} differs after the round trip"
    arch = json.loads((out / "config.json").read_text())["architectures"]
    assert arch == json.loads((folder / "config.json").read_text())["architectures"]
    ids = torch.from_numpy(random_ids(model.config.vocab_size, 1, 12, seed=1)).long()
    with torch.no_grad():
        np.testing.assert_array_equal(hf_model(out)(ids).logits.numpy(), hf_model(folder)(ids).logits.numpy())


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def check_greedy_generation_equals_argmax_loop(model, prompt_len: int = 5, new_tokens: int = 12):
    """Greedy KV-cache sampling equals re-running the full forward and taking the argmax each step
    (two prompts of different lengths, so left padding is exercised)."""
    from jaxalign.generation.sampler import generate_ids

    vocab = model.config.vocab_size
    prompts = [random_ids(vocab, 1, prompt_len, seed=2)[0].tolist(), random_ids(vocab, 1, prompt_len + 3, seed=3)[0].tolist()]
    got = generate_ids(model, prompts, max_new_tokens=new_tokens, sampling=_greedy(), eos_token_ids=())
    # The reference loop runs one compiled full forward at a fixed right-padded length: under the
    # causal mask, the logits at the last real position do not see the padding after it.
    forward = compiled_forward(model)
    width = max(map(len, prompts)) + new_tokens
    for prompt, tokens in zip(prompts, got):
        ids = list(prompt)
        for _ in range(new_tokens):
            logits = forward([ids + [0] * (width - len(ids))])
            ids.append(int(jnp.argmax(logits[0, len(ids) - 1])))
        assert tokens == ids[len(prompt):], (tokens, ids[len(prompt):])


def _greedy():
    from jaxalign.generation.sampler import SamplingParams

    return SamplingParams(temperature=0.0)


def dpo_batch(vocab: int, pairs: int = 2, prompt: int = 4, response: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    T = prompt + response
    prompts = rng.integers(0, vocab, (pairs, prompt))
    batch = {}
    for side in ("chosen", "rejected"):
        ids = np.concatenate([prompts, rng.integers(0, vocab, (pairs, response))], axis=1).astype(np.int32)
        batch[f"{side}_input_ids"] = ids
        batch[f"{side}_loss_mask"] = np.concatenate([np.zeros((pairs, prompt)), np.ones((pairs, response))], 1).astype(np.int32)
        batch[f"{side}_positions"] = np.broadcast_to(np.arange(T, dtype=np.int32), (pairs, T)).copy()
        batch[f"{side}_segment_ids"] = np.ones((pairs, T), np.int32)
    batch["example_mask"] = np.ones((pairs, 1), np.int32)
    return jax.tree.map(jnp.asarray, batch)


def check_dpo_step(model, steps: int = 2, **loss_kwargs) -> list[float]:
    """DPO steps with the model as policy and (a copy as) reference: the first loss is ln 2, the
    parameters move, every loss is finite. Returns the losses."""
    from jaxalign.config.schema import LossConfig, OptimizerConfig
    from jaxalign.objectives import ObjectiveContext, get_objective
    from jaxalign.train.optimizer import build_optimizer
    from jaxalign.train.step import GraphDefs, make_loss_fn, make_train_step

    graphdef, params = nnx.split(model)
    frozen = {"reference": jax.tree.map(jnp.copy, params)}
    loss_fn = make_loss_fn(get_objective("dpo"), ObjectiveContext(LossConfig(name="dpo", **loss_kwargs)),
                           GraphDefs(policy=graphdef, reference=graphdef))
    tx, schedule = build_optimizer(OptimizerConfig(lr=1e-3, warmup_steps=0, schedule="constant"), 10, params)
    before = jax.tree.map(np.asarray, params)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(0))}
    step = make_train_step(loss_fn, tx, schedule)
    batch = dpo_batch(model.config.vocab_size)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, frozen, batch)
        losses.append(float(metrics["loss"]))
    assert np.isclose(losses[0], np.log(2), atol=1e-5), losses
    assert all(np.isfinite(losses)), losses
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, state["params"])
    assert any(jax.tree.leaves(moved)), "no parameter changed"
    return losses
