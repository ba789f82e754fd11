"""Fixtures for the data tests: small local tokenizers (no hub), row writers."""

from __future__ import annotations

import json

import pytest

SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

#: ChatML that emits BOS itself and ends every turn with EOS (<|im_end|>) + newline.
CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: ChatML with a default system prompt when the conversation has none.
CHATML_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful bot.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: A template that emits neither BOS nor EOS.
PLAIN_ROLES = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

CORPUS = [
    "Hello world, how are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "user assistant system Human Assistant Response A B",
    "What is the capital of France? Paris is the capital of France.",
    "Tell me a joke. Why did the chicken cross the road?",
] * 8


@pytest.fixture(scope="session")
def raw_tokenizer():
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on a tiny corpus (any text encodes, no <unk>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@pytest.fixture(scope="session")
def make_tokenizer(raw_tokenizer):
    """``make_tokenizer(eos="</s>", template=None, bos="<s>", pad="<pad>")`` -> a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    def make(eos="</s>", template=None, bos="<s>", pad="<pad>"):
        kwargs = {"eos_token": eos}
        if bos is not None:
            kwargs["bos_token"] = bos
        if pad is not None:
            kwargs["pad_token"] = pad
        tok = PreTrainedTokenizerFast(tokenizer_object=raw_tokenizer, **kwargs)
        if template is not None:
            tok.chat_template = template
        return tok

    return make


@pytest.fixture(scope="session")
def tok(make_tokenizer):
    """Plain-text tokenizer: BOS <s>, EOS </s>, PAD <pad>, no chat template."""
    return make_tokenizer()


@pytest.fixture(scope="session")
def chat_tok(make_tokenizer):
    """ChatML tokenizer: the template emits BOS and ends turns with EOS (<|im_end|>)."""
    return make_tokenizer(eos="<|im_end|>", template=CHATML)


@pytest.fixture
def write_jsonl(tmp_path):
    """``write_jsonl(rows, name="data.jsonl")`` -> path; a ``str`` row is written verbatim (e.g. a broken line)."""

    def write(rows, name="data.jsonl"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            for row in rows:
                f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
        return str(path)

    return write


def _pairs(n, *, prompt="Hello world", extra=None):
    rows = []
    for i in range(n):
        row = {"prompt": f"{prompt} {i}", "chosen": f"fine {i} thank you", "rejected": f"fox {i}"}
        if extra:
            row.update({k: v(i) if callable(v) else v for k, v in extra.items()})
        rows.append(row)
    return rows


@pytest.fixture(scope="session")
def pairs():
    """``pairs(n, prompt=..., extra={col: value or fn(i)})`` -> ``n`` distinct plain-text preference rows."""
    return _pairs
