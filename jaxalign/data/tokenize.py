"""Records -> token ids (prompt and responses), and truncation.

Plain text: ``prompt_ids = [BOS] + tok(prompt)`` (BOS per ``add_bos``; never
doubled) and ``response_ids = tok(response) + [EOS]`` (no second EOS if the
text already ends with one).

Chat templates: the prompt is rendered with ``add_generation_prompt=True`` and
the response is the continuation of the rendered *full* conversation, so
``prompt_ids + response_ids`` equals the template applied to the whole
conversation (BOS and system prompt appear once, as the template emits them),
followed by one EOS unless the template already ends the turn with EOS
(possibly followed by whitespace such as ChatML's ``"<|im_end|>\\n"``).
If the full text's tokens do not start with the prompt's tokens (a BPE merge
across the boundary), the continuation text is tokenised on its own;
``Encoded.retokenized`` counts such rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from jaxalign.data.errors import DataError, RowError
from jaxalign.data.formats import Record

__all__ = ["Encoder", "Encoded", "with_bos", "truncate_prompt", "truncate_pair_budget"]

_CHUNK = 512


@dataclass
class Encoded:
    """Token ids of one record: ``prompt`` and one (SFT, unpaired) or two (pair) ``responses`` (int32)."""

    record: Record
    prompt: np.ndarray
    responses: list[np.ndarray]
    retokenized: bool = False


def with_bos(ids: list[int], bos: int | None, add_bos: bool | None) -> list[int]:
    """A plain-text prompt's ids as training lays them out: ``[BOS] + ids`` when ``add_bos`` (None:
    when there is a BOS), never doubled. The generation stages call this too, so a sampled prompt
    is the prompt the trained model sees."""
    if bos is not None and (add_bos is None or add_bos) and (not ids or ids[0] != bos):
        return [bos] + ids
    return ids


class Encoder:
    """Tokenises records with a ``transformers`` tokenizer, in chunks (fast batch tokenisation)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        use_chat_template: bool | None = None,
        add_bos: bool | None = None,
        append_eos: bool = True,
    ):
        self.tok = tokenizer
        self.use_chat_template = use_chat_template
        self.append_eos = append_eos
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise DataError("tokenizer has no eos_token; set one (responses end with EOS)")
        self.add_bos = (self.bos is not None) if add_bos is None else bool(add_bos)
        if self.add_bos and self.bos is None:
            raise DataError("data.add_bos=true but the tokenizer has no bos_token")
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    def uses_template(self, record: Record) -> bool:
        """Whether ``record`` goes through the chat template (raises if it must but cannot)."""
        if record.conversational:
            if self.use_chat_template is False:
                raise DataError(
                    "conversational rows need a chat template but data.use_chat_template=false; "
                    "use plain-text columns or enable the template"
                )
            if not self.has_template:
                raise DataError(
                    "conversational rows need a chat template, but the tokenizer has none "
                    "(set tokenizer.chat_template)"
                )
            return True
        if self.use_chat_template:
            if not self.has_template:
                raise DataError("data.use_chat_template=true but the tokenizer has no chat_template")
            return True
        return False

    def encode(self, records: Sequence[Record]) -> list[Encoded | RowError]:
        """Encode records; a row-level failure is returned as a ``RowError`` in its place."""
        out: list[Encoded | RowError] = []
        for start in range(0, len(records), _CHUNK):
            out.extend(self._encode_chunk(records[start : start + _CHUNK]))
        return out

    # ------------------------------------------------------------------ internals

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return list(self.tok(texts, add_special_tokens=False)["input_ids"])

    def _encode_chunk(self, records: Sequence[Record]) -> list[Encoded | RowError]:
        # Phase 1: render every text to tokenise; phase 2: one batched tokenizer call.
        plans: list[Any] = []
        texts: list[str] = []

        def add(text: str) -> int:
            texts.append(text)
            return len(texts) - 1

        for rec in records:
            sides = [rec.chosen] if rec.rejected is None else [rec.chosen, rec.rejected]
            try:
                if self.uses_template(rec):
                    prompt_msgs = _as_messages(rec.prompt, "user")
                    prompt_text = self._render(prompt_msgs, True, "prompt")
                    fulls = []
                    for name, side in zip(("chosen", "rejected"), sides):
                        full = self._render(prompt_msgs + _as_messages(side, "assistant"), False, name)
                        if not full.startswith(prompt_text):
                            raise RowError(
                                name,
                                "the chat template does not render the prompt (with generation prompt) "
                                "as a prefix of the full conversation",
                            )
                        fulls.append((add(full), add(full[len(prompt_text) :])))
                    plans.append(("chat", add(prompt_text), fulls))
                else:
                    plans.append(("text", add(rec.prompt), [add(s) for s in sides]))
            except RowError as e:
                plans.append(e)
        ids = self._tokenize(texts)

        out: list[Encoded | RowError] = []
        for rec, plan in zip(records, plans):
            if isinstance(plan, RowError):
                out.append(plan)
                continue
            kind, p, sides = plan
            if kind == "text":
                prompt = with_bos(list(ids[p]), self.bos, self.add_bos)
                responses = [self._finish(list(ids[s])) for s in sides]
                out.append(Encoded(rec, _i32(prompt), [_i32(r) for r in responses]))
                continue
            prompt = self._dedupe_bos(list(ids[p]))
            responses, retok = [], False
            for full_i, rest_i in sides:
                full = self._dedupe_bos(list(ids[full_i]))
                if full[: len(prompt)] == prompt:
                    response = full[len(prompt) :]
                else:  # BPE merged across the boundary: tokenise the continuation alone
                    response, retok = list(ids[rest_i]), True
                responses.append(_i32(self._finish(response)))
            out.append(Encoded(rec, _i32(prompt), responses, retok))
        return out

    def _render(self, messages: list[dict], generation_prompt: bool, field: str) -> str:
        try:
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e:  # noqa: BLE001 - template errors are row errors (e.g. role order)
            raise RowError(field, f"chat template failed: {e}") from None
        if not isinstance(text, str):
            raise DataError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
        return text

    def _dedupe_bos(self, ids: list[int]) -> list[int]:
        while self.bos is not None and len(ids) >= 2 and ids[0] == self.bos and ids[1] == self.bos:
            ids = ids[1:]
        return ids

    def _finish(self, response: list[int]) -> list[int]:
        """Append exactly one EOS unless the response already ends with one (or EOS + whitespace)."""
        if not self.append_eos or self._ends_with_eos(response):
            return response
        return response + [self.eos]

    def _ends_with_eos(self, ids: list[int]) -> bool:
        if not ids:
            return False
        if ids[-1] == self.eos:
            return True
        tail = ids[-4:]
        if self.eos not in tail:
            return False
        after = tail[len(tail) - tail[::-1].index(self.eos) :]
        return self.tok.decode(after).strip() == ""


def truncate_prompt(prompt: np.ndarray, limit: int, policy: str) -> np.ndarray:
    """Cut ``prompt`` to ``limit`` tokens: ``keep_end`` drops the beginning, ``keep_start`` the end."""
    if len(prompt) <= limit:
        return prompt
    return prompt[-limit:] if policy == "keep_end" else prompt[:limit]


def truncate_pair_budget(a: np.ndarray, b: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut two responses that share one sequence so ``len(a) + len(b) <= budget``, the longer first."""
    if len(a) + len(b) <= budget:
        return a, b
    half = budget // 2
    if len(a) <= half:
        return a, b[: budget - len(a)]
    if len(b) <= half:
        return a[: budget - len(b)], b
    return a[:half], b[: budget - half]


def _as_messages(value: Any, role: str) -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def _i32(ids: list[int]) -> np.ndarray:
    return np.asarray(ids, dtype=np.int32)
