"""jaxalign.data.tokenize: chat templates (exact concatenation, BOS/EOS/system once), plain text, truncation."""

import numpy as np
import pytest

from jaxalign.data import parse_row
from jaxalign.data.tokenize import Encoder, truncate_pair_budget, truncate_prompt

from .conftest import CHATML_SYSTEM, PLAIN_ROLES

SYS = {"role": "system", "content": "Be brief."}
U = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "Paris is the capital of France."}
A2 = {"role": "assistant", "content": "Tell me a joke."}


def _pair(prompt=(U,)):
    return parse_row({"prompt": list(prompt), "chosen": [A1], "rejected": [A2]}, "chat_preference", 0)


def _full_ids(tokenizer, messages):
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_chat_prompt_plus_response_equals_full_conversation(chat_tok):
    (enc,) = Encoder(chat_tok).encode([_pair((SYS, U))])
    for response, side in zip(enc.responses, (A1, A2)):
        assert enc.prompt.tolist() + response.tolist() == _full_ids(chat_tok, [SYS, U, side])


def test_chat_template_bos_is_not_doubled(chat_tok):
    (enc,) = Encoder(chat_tok).encode([_pair()])
    ids = enc.prompt.tolist() + enc.responses[0].tolist()
    assert ids[0] == chat_tok.bos_token_id and ids.count(chat_tok.bos_token_id) == 1


def test_chat_template_eos_once_when_template_ends_turn(chat_tok):
    (enc,) = Encoder(chat_tok).encode([_pair()])
    response = enc.responses[0].tolist()
    # ChatML ends the turn with "<|im_end|>\n": EOS is there once and none is appended.
    assert response.count(chat_tok.eos_token_id) == 1
    assert chat_tok.decode(response[response.index(chat_tok.eos_token_id) + 1 :]).strip() == ""


def test_chat_template_without_eos_gets_exactly_one(make_tokenizer):
    tokenizer = make_tokenizer(template=PLAIN_ROLES)
    (enc,) = Encoder(tokenizer).encode([_pair()])
    response = enc.responses[0].tolist()
    assert response[-1] == tokenizer.eos_token_id and response.count(tokenizer.eos_token_id) == 1
    assert enc.prompt.tolist() + response[:-1] == _full_ids(tokenizer, [U, A1])


def test_default_system_prompt_appears_once(make_tokenizer):
    tokenizer = make_tokenizer(eos="<|im_end|>", template=CHATML_SYSTEM)
    (enc,) = Encoder(tokenizer).encode([_pair()])
    text = tokenizer.decode(enc.prompt.tolist() + enc.responses[0].tolist())
    assert text.count("You are a helpful bot.") == 1
    assert enc.prompt.tolist() + enc.responses[0].tolist() == _full_ids(tokenizer, [U, A1])


def test_plain_text_gets_one_bos_and_one_eos(tok):
    rec = parse_row({"prompt": "<s>Hello world", "chosen": " fine</s>", "rejected": " fox"}, "preference", 0)
    (enc,) = Encoder(tok).encode([rec])
    assert enc.prompt.tolist().count(tok.bos_token_id) == 1 and enc.prompt[0] == tok.bos_token_id
    for response in enc.responses:
        assert response[-1] == tok.eos_token_id and response.tolist().count(tok.eos_token_id) == 1


def test_use_chat_template_wraps_plain_text(chat_tok):
    rec = parse_row({"prompt": U["content"], "chosen": A1["content"], "rejected": A2["content"]}, "preference", 0)
    (enc,) = Encoder(chat_tok, use_chat_template=True).encode([rec])
    assert enc.prompt.tolist() + enc.responses[0].tolist() == _full_ids(chat_tok, [U, A1])


def test_truncate_prompt_policies():
    p = np.arange(10, dtype=np.int32)
    assert truncate_prompt(p, 4, "keep_end").tolist() == [6, 7, 8, 9]
    assert truncate_prompt(p, 4, "keep_start").tolist() == [0, 1, 2, 3]
    assert truncate_prompt(p, 20, "keep_end") is p


@pytest.mark.parametrize("la, lb, budget, expect", [(3, 4, 10, (3, 4)), (2, 9, 8, (2, 6)), (9, 9, 8, (4, 4))])
def test_truncate_pair_budget(la, lb, budget, expect):
    a, b = truncate_pair_budget(np.arange(la), np.arange(lb), budget)
    assert (len(a), len(b)) == expect
