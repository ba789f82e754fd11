"""Fixtures for engine tests: a learnable synthetic preference set and a saved byte tokenizer."""

import json
import random

import pytest

from tests.conftest import _byte_tokenizer


def synthetic_preferences(n: int, seed: int) -> list[dict]:
    """Chosen responses start with 'good', rejected with 'bad': a preference a tiny model can learn."""
    rng = random.Random(seed)
    word = lambda: "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8)))  # noqa: E731
    rows = []
    for _ in range(n):
        prompt = " ".join(word() for _ in range(rng.randint(2, 5)))
        rows.append({"prompt": prompt + "?", "chosen": " good " + word(), "rejected": " bad " + word()})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def byte_tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    _byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def preference_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefs")
    return write_jsonl(root / "train.jsonl", synthetic_preferences(64, 0)), write_jsonl(root / "eval.jsonl", synthetic_preferences(32, 1))


def tiny_overrides(preference_data, tokenizer_dir, output_dir) -> list[str]:
    """Overrides of configs/tiny_dpo.yaml for a quiet run on the synthetic preference set."""
    train, held_out = preference_data
    return [
        f"data.path={train}", f"eval_data={held_out}", f"model.tokenizer={tokenizer_dir}",
        f"train.output_dir={output_dir}", "data.max_length=64", "data.max_prompt_length=32",
        "data.buckets=[64]", "logging.tensorboard=false", "logging.progress_bar=false", "logging.plot=false",
        "train.export_hf=false", "checkpoint.async_save=false",
    ]


@pytest.fixture
def tiny_dpo_overrides(preference_data, byte_tokenizer_dir, tmp_path):
    return tiny_overrides(preference_data, byte_tokenizer_dir, tmp_path / "run")
