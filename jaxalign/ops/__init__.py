"""Attention and log-prob primitives.

- ``attention``: grouped-query attention, one entry point for several kernels (xla, blockwise,
  cudnn, splash); see ``jaxalign.ops.attention``'s module docstring.

Log-prob primitives never materialise ``[batch, seq, vocab]`` float32 logits:

- ``token_logprobs``: chunked LM head + log-softmax + target gather.
- ``masked_token_logprobs``: the same only at the scored (masked) positions, packed into a
  static buffer; chunks without a scored position are skipped; hand-written VJP.
- ``sequence_logprobs`` / ``segment_logprobs``: masked per-sequence (or
  per-packed-segment) sums and means.
- ``vocab_parallel_token_logprobs`` (inside ``jax.shard_map``) and
  ``sharded_token_logprobs`` (takes a ``Mesh``): vocab split over ``tensor``.
- ``token_distill_loss`` / ``token_distill_divergence``: chunked
  teacher–student divergences (forward/reverse KL, generalised JSD); ``teacher_topk`` /
  ``cached_distill_loss``: the same from a cached top-k teacher distribution plus its residual mass.
"""

from jaxalign.ops.attention import attention
from jaxalign.ops.distill import (
    DIVERGENCES,
    cached_distill_divergence,
    cached_distill_loss,
    logits_divergence,
    teacher_topk,
    token_distill_divergence,
    token_distill_loss,
)
from jaxalign.ops.logprobs import (
    compute_logits,
    masked_token_logprobs,
    segment_logprobs,
    sequence_logprobs,
    token_logprobs,
)
from jaxalign.ops.vocab_parallel import sharded_token_logprobs, vocab_parallel_token_logprobs

__all__ = [
    "DIVERGENCES",
    "attention",
    "cached_distill_divergence",
    "cached_distill_loss",
    "compute_logits",
    "logits_divergence",
    "masked_token_logprobs",
    "segment_logprobs",
    "sequence_logprobs",
    "sharded_token_logprobs",
    "teacher_topk",
    "token_distill_divergence",
    "token_distill_loss",
    "token_logprobs",
    "vocab_parallel_token_logprobs",
]
