"""Config sections that name a model: ``ModelSpec`` (reference, teacher, judges), ``PolicyModel`` (the
trained model: a ``ModelSpec`` with ``lora``) and ``GenerateModel``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from jaxalign.config.fields import setting
from jaxalign.models.decoder import LAYER_LOOPS, REMAT_POLICIES
from jaxalign.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS

__all__ = ["GenerateModel", "LoraConfig", "MODEL_DTYPES", "ModelSpec", "PolicyModel"]

MODEL_DTYPES = ("float32", "bfloat16")


@dataclass
class ModelSpec:
    """A model to load (``path``) or build with random weights (``preset``)."""

    path: str = ""
    """Hugging Face model folder, ``.gguf`` file or hub id; "" = none (each section says what none means)."""

    preset: str = ""
    """Random-init preset for tests and benchmarks (see ``jaxalign.config.presets``); use instead of ``path``."""

    tokenizer: str = ""
    """Tokenizer folder or hub id; "" = the one that comes with ``path``."""

    dtype: str = setting("float32", choices=MODEL_DTYPES)
    """Compute dtype of activations and matmuls."""

    param_dtype: str = setting("float32", choices=MODEL_DTYPES)
    """Dtype of the stored (master) weights."""

    remat: str = setting("none", choices=tuple(REMAT_POLICIES))
    """Rematerialisation of each decoder layer in the backward pass: none | full | dots | save_all."""

    attention: str = setting("auto", choices=ATTENTION_IMPLEMENTATIONS)
    """Attention implementation (``jaxalign.ops.attention``): auto picks the backend's fastest."""

    layer_loop: str = setting("scan", choices=LAYER_LOOPS)
    """Layers under one ``lax.scan`` (compiles like one layer) or unrolled (longer compiles)."""

    def is_set(self) -> bool:
        """True when the spec names a model (a path or a preset)."""
        return bool(self.path or self.preset)


@dataclass
class LoraConfig:
    """LoRA adapters on the policy's projections (``jaxalign.models.lora``): only they train, and the
    reference is the same model with them disabled (no second copy of the weights)."""

    rank: int = setting(0, ge=0, integer=True)
    """Adapter rank r; 0 = LoRA off (every parameter trains)."""

    alpha: float = setting(16.0, gt=0)
    """The adapter's output is scaled by alpha / rank."""

    dropout: float = setting(0.0, ge=0, lt=1)
    """Dropout rate on the adapters' input during training."""

    targets: List[str] = field(default_factory=lambda: ["all-linear"])
    """Projections to adapt (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; in MoE families
    router and the experts expert_gate, expert_up, expert_down, one adapter pair per expert), or all-linear:
    every attention and MLP projection and every expert (not the router)."""


@dataclass
class PolicyModel(ModelSpec):
    """The trained model: a ``ModelSpec`` with optional LoRA adapters."""

    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (``model.lora.rank=0``: off)."""


@dataclass
class GenerateModel(ModelSpec):
    """A model of the ``generate`` stage: a ``ModelSpec`` with a name."""

    name: str = ""
    """Name of the model's output column(s) and of its rows' ``model`` field."""
