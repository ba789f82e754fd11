"""KV-cache generation: equals full-sequence greedy decoding, compiles once, deterministic sampling."""

import jax
import jax.numpy as jnp
import pytest

from jaxalign.generation import SamplingParams, generate, generate_ids, sample_tokens
from jaxalign.generation.sampler import _generate
from jaxalign.models import load_pretrained

PROMPTS = [[5, 6, 7, 8, 9], [11, 12], list(range(20, 39))]


@pytest.fixture(scope="module")
def model(tiny_hf_checkpoint):
    return load_pretrained(tiny_hf_checkpoint("llama_gqa"), tokenizer=False)[0]


def _full_sequence_greedy(model, prompt, n, width=48):
    """Re-run the whole sequence for every token (right-padded to one width: causal, one compile)."""
    logits_at = jax.jit(lambda ids, i: model(ids)[0, i])
    seq = list(prompt)
    for _ in range(n):
        ids = jnp.asarray([seq + [0] * (width - len(seq))], jnp.int32)
        seq.append(int(jnp.argmax(logits_at(ids, len(seq) - 1))))
    return seq[len(prompt):]


def test_greedy_with_cache_equals_full_sequence_argmax(model):
    out = generate_ids(model, PROMPTS, max_new_tokens=10, sampling=SamplingParams(temperature=0.0))
    assert out == [_full_sequence_greedy(model, p, 10) for p in PROMPTS]


def test_compiles_once_whatever_max_new_tokens(model):
    _generate.clear_cache()
    for n in (3, 9, 17):
        generate_ids(model, PROMPTS, max_new_tokens=n, sampling=SamplingParams(temperature=0.0))
    assert _generate._cache_size() == 1


def test_sampling_is_deterministic_for_a_seed(model):
    params = SamplingParams(temperature=1.0, top_k=20, top_p=0.9)
    a = generate_ids(model, PROMPTS, max_new_tokens=8, sampling=params, seed=7)
    b = generate_ids(model, PROMPTS, max_new_tokens=8, sampling=params, seed=7)
    c = generate_ids(model, PROMPTS, max_new_tokens=8, sampling=params, seed=8)
    assert a == b and a != c


def test_stops_at_eos(model):
    first = generate_ids(model, PROMPTS[:1], max_new_tokens=6, sampling=SamplingParams(0.0))[0]
    stopped = generate_ids(model, PROMPTS[:1], max_new_tokens=6, sampling=SamplingParams(0.0), eos_token_ids=[first[2]])[0]
    assert stopped == first[: first.index(first[2]) + 1]


def test_top_k_and_top_p_restrict_the_support():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = [__import__("jax").random.key(i) for i in range(200)]
    k2 = {int(sample_tokens(logits, k, SamplingParams(1.0, top_k=2))[0]) for k in keys}
    p07 = {int(sample_tokens(logits, k, SamplingParams(1.0, top_p=0.7))[0]) for k in keys}
    assert k2 == {0, 1} and p07 == {0, 1}


def test_chat_prompts_and_text_decoding(tiny_hf_checkpoint):
    """`generate` = the chat template / BOS layout, greedy full-sequence decoding, EOS dropped, decoded."""
    from jaxalign.generation import encode_prompts

    model, tokenizer = load_pretrained(tiny_hf_checkpoint("llama_gqa"))
    prompts = [[{"role": "user", "content": "hi"}], "plain text"]
    texts = generate(model, tokenizer, prompts, max_new_tokens=5, temperature=0)
    encoded = encode_prompts(tokenizer, prompts)
    chat = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(encoded[0]) == chat and chat.endswith("<|assistant|>")
    assert encoded[1] == [tokenizer.bos_token_id] + tokenizer("plain text", add_special_tokens=False)["input_ids"]
    eos = set(model.config.eos_token_ids)
    expected = []
    for ids in encoded:
        new = _full_sequence_greedy(model, ids, 5)
        new = new[: next((i + 1 for i, t in enumerate(new) if t in eos), len(new))]  # generation stops at EOS
        expected.append(tokenizer.decode([t for t in new if t not in eos], skip_special_tokens=True))
    assert texts == expected and any(texts), texts


def test_prompt_longer_than_context_is_refused(model):
    with pytest.raises(ValueError, match=r"prompts\[0\] has 250 tokens; with max_new_tokens=10 it exceeds the model's context of 256"):
        generate_ids(model, [[3] * 250], max_new_tokens=10)


def test_empty_prompt_list_is_refused(model):
    with pytest.raises(ValueError, match="prompts is empty"):
        generate_ids(model, [], max_new_tokens=4)


@pytest.mark.parametrize("add_bos", [None, False])
def test_prompt_ids_are_laid_out_as_training_lays_them_out(byte_tokenizer, add_bos):
    # the byte tokenizer has a BOS that it does not add by itself: training prepends it to plain text
    from jaxalign.data.formats import Record
    from jaxalign.data.tokenize import Encoder
    from jaxalign.generation import encode_prompts

    text, chat = "what is 2 plus 2?", [{"role": "user", "content": "what is 2 plus 2?"}]
    encoder = Encoder(byte_tokenizer, add_bos=add_bos)
    trained = [encoder.encode([Record(0, p, r, conversational=isinstance(p, list))])[0].prompt.tolist()
               for p, r in ((text, "4"), (chat, [{"role": "assistant", "content": "4"}]))]
    assert encode_prompts(byte_tokenizer, [text, chat], add_bos=add_bos) == trained
    assert (trained[0][0] == byte_tokenizer.bos_token_id) == (add_bos is None)
