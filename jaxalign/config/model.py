"""Config sections that name a model: ``ModelSpec`` (policy, reference, teacher, judges) and ``GenerateModel``."""

from __future__ import annotations

from dataclasses import dataclass

from jaxalign.config.fields import setting
from jaxalign.models.decoder import LAYER_LOOPS, REMAT_POLICIES
from jaxalign.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS

__all__ = ["GenerateModel", "MODEL_DTYPES", "ModelSpec"]

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
class GenerateModel(ModelSpec):
    """A model of the ``generate`` stage: a ``ModelSpec`` with a name."""

    name: str = ""
    """Name of the model's output column(s) and of its rows' ``model`` field."""
