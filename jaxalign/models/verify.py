"""Checker: a converted folder against `transformers` (PyTorch, float32) on the source checkpoint.

Compares, on a few prompts, (1) jaxalign logits vs transformers logits of the
source, (2) transformers logits of the converted folder vs the source, and
(3) greedy continuations. Needs torch; used by `jaxalign convert --verify`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

DEFAULT_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Write a haiku about the sea.",
)


@dataclasses.dataclass
class VerifyReport:
    max_abs_diff_jax: float  # jaxalign(converted) vs transformers(source)
    max_abs_diff_hf: float  # transformers(converted) vs transformers(source)
    greedy_match: bool
    continuations: list[tuple[str, str]]  # (jaxalign, transformers) per prompt

    def ok(self, atol: float) -> bool:
        return self.max_abs_diff_jax <= atol and self.max_abs_diff_hf <= atol and self.greedy_match

    def summary(self) -> str:
        lines = [
            f"max |logits jaxalign - transformers(source)|   = {self.max_abs_diff_jax:.3g}",
            f"max |logits transformers(converted) - source|  = {self.max_abs_diff_hf:.3g}",
            f"greedy continuations identical: {self.greedy_match}",
        ]
        lines += [f"  jaxalign: {a!r}\n  hf:       {b!r}" for a, b in self.continuations]
        return "\n".join(lines)


def _torch_model(source: Path):
    from transformers import AutoModelForCausalLM

    if source.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype="float32").eval()
    return AutoModelForCausalLM.from_pretrained(str(source), dtype="float32").eval()


def verify_conversion(converted: str | Path, source: str | Path, *, prompts=DEFAULT_PROMPTS, max_new_tokens: int = 8) -> VerifyReport:
    try:
        import torch
    except ImportError:
        raise RuntimeError("--verify needs PyTorch: pip install torch") from None
    from jaxalign.generation.sampler import SamplingParams, generate_ids
    from jaxalign.models.pretrained import load_pretrained

    converted, source = Path(converted), Path(source)
    model, tokenizer = load_pretrained(converted, dtype="float32")
    ref = _torch_model(source)
    out = _torch_model(converted)
    diff_jax = diff_hf = 0.0
    match, conts = True, []
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            ref_logits = ref(torch.tensor([ids])).logits[0].float().numpy()
            out_logits = out(torch.tensor([ids])).logits[0].float().numpy()
            hf_new = ref.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id or 0,
            )[0, len(ids):].tolist()
        jax_logits = np.asarray(model(np.asarray([ids], np.int32)))[0]
        diff_jax = max(diff_jax, float(np.abs(jax_logits - ref_logits).max()))
        diff_hf = max(diff_hf, float(np.abs(out_logits - ref_logits).max()))
        eos = model.config.eos_token_ids
        jax_new = generate_ids(model, [ids], max_new_tokens=max_new_tokens, sampling=SamplingParams(0.0),
                               eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id or 0)[0]
        hf_new = hf_new[: len(jax_new)] if len(jax_new) < len(hf_new) and jax_new and jax_new[-1] in eos else hf_new
        match &= jax_new == hf_new
        conts.append((tokenizer.decode(jax_new), tokenizer.decode(hf_new)))
    return VerifyReport(diff_jax, diff_hf, match, conts)


def transformers_logits_float64(folder: str | Path, input_ids) -> np.ndarray:
    """transformers' logits `[B,T,V]` (float64) of the HF folder for `input_ids` `[B,T]`, every op in
    float64: the model in double with `sdpa` attention, and the float32 islands of its layers lifted
    (the RMS norms' float32 cast, the rotary angles and cos/sin in float32; inv_freq keeps its float32
    values, as jaxalign's). A reference that separates a port's or an export's parity from float32
    rounding: a float64 jaxalign model (`jax.enable_x64`) agrees with it to ~1e-12, where float32
    runs of the two differ by ~1e-4 (so do transformers' own float32 `sdpa` and `eager`). Llama-style
    norms (`x * rsqrt(mean(x²) + eps) * w`) only; another norm raises ValueError."""
    import types

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float64, attn_implementation="sdpa").eval()
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            if not hasattr(module, "variance_epsilon"):
                raise ValueError(f"float64 reference: {name} is not a Llama-style RMS norm")
            module.forward = types.MethodType(_rms_norm_float64, module)
        elif name.endswith("RotaryEmbedding"):
            module.forward = types.MethodType(_rotary_float64, module)
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(input_ids), dtype=torch.long)).logits.numpy()


def _rms_norm_float64(self, x):
    return self.weight * (x * (x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon).rsqrt())


def _rotary_float64(self, x, position_ids):
    import torch

    freqs = position_ids[..., None].double() * self.inv_freq.double()
    emb = torch.cat((freqs, freqs), dim=-1)
    scale = getattr(self, "attention_scaling", 1.0)
    return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)
