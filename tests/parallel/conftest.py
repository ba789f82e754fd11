from tests.train.conftest import byte_tokenizer_dir, preference_data, tiny_dpo_overrides  # noqa: F401
