"""Random-init model presets for tests and benchmarks (``model.preset=NAME``).

Each preset is a dict of Hugging Face ``config.json`` fields, the same shape that
``jaxalign.models.config.ModelConfig.from_hf_dict`` reads, so a preset builds
exactly the decoder that a checkpoint with that ``config.json`` would.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

__all__ = ["MODEL_PRESETS", "preset_hf_config"]

_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu"}

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests: the byte-level test tokenizer fits in 320 ids; ~60k parameters.
    "tiny": {
        **_LLAMA,
        "vocab_size": 320,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    },
    # Slightly larger smoke tests (sharding over several axes, a few steps of learning).
    "small": {
        **_LLAMA,
        "vocab_size": 320,
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    },
    # Benchmarks: Llama-shaped, 4 layers of width 512, a Llama-2-sized vocabulary and an untied head.
    "bench-llama-4x512": {
        **_LLAMA,
        "vocab_size": 32000,
        "hidden_size": 512,
        "intermediate_size": 1376,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    },
}


def preset_hf_config(name: str) -> dict[str, Any]:
    """A copy of preset ``name``'s HF config dict; ``ValueError`` with the closest names otherwise."""
    try:
        return copy.deepcopy(MODEL_PRESETS[name])
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(MODEL_PRESETS), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown model preset {name!r} (known: {', '.join(MODEL_PRESETS)}){hint}"
        ) from None
