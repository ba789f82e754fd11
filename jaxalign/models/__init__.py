"""Decoder models: a shared layer library (`layers/`), one file per family (`families/`), one generic
decoder, and their HF / GGUF checkpoints."""

from jaxalign.models.config import ConfigError, ModelConfig
from jaxalign.models.decoder import Decoder, ScalarHeadModel
from jaxalign.models.families import families, supported_architectures
from jaxalign.models.pretrained import init_model, load_model, load_pretrained, load_tokenizer, save_pretrained
from jaxalign.models.prune import layers_to_drop, prune_checkpoint, prune_layers
from jaxalign.models.safetensors_io import CheckpointError

__all__ = [
    "CheckpointError", "ConfigError", "Decoder", "ModelConfig", "ScalarHeadModel", "families", "init_model",
    "layers_to_drop", "load_model", "load_pretrained", "load_tokenizer", "prune_checkpoint", "prune_layers",
    "save_pretrained", "supported_architectures",
]
