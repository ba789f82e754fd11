"""jaxalign: align and distil language models in JAX (DPO family, daDPO, RDO, KTO, RRHF, SFT, reward models)."""

from jaxalign.generation.sampler import generate
from jaxalign.models.config import ModelConfig
from jaxalign.models.pretrained import init_model, load_pretrained, save_pretrained
from jaxalign.models.prune import prune_layers

__version__ = "0.1.0"
__all__ = ["ModelConfig", "generate", "init_model", "load_pretrained", "save_pretrained", "prune_layers"]
