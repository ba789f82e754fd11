"""KV-cache sampling."""

from jaxalign.generation.sampler import SamplingParams, encode_prompts, generate, generate_ids, sample_tokens

__all__ = ["SamplingParams", "encode_prompts", "generate", "generate_ids", "sample_tokens"]
