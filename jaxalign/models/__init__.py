"""Llama-family decoders (Llama 2/3, Mistral, Qwen2/2.5, SmolLM2) and their HF/GGUF checkpoints."""

from jaxalign.models.config import ConfigError, ModelConfig
from jaxalign.models.decoder import Decoder, ScalarHeadModel
from jaxalign.models.pretrained import init_model, load_model, load_pretrained, load_tokenizer, save_pretrained
from jaxalign.models.prune import layers_to_drop, prune_checkpoint, prune_layers
from jaxalign.models.safetensors_io import CheckpointError

__all__ = [
    "CheckpointError", "ConfigError", "Decoder", "ModelConfig", "ScalarHeadModel", "init_model", "layers_to_drop",
    "load_model", "load_pretrained", "load_tokenizer", "prune_checkpoint", "prune_layers", "save_pretrained",
]
