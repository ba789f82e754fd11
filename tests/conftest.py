"""Test session set-up: 8 virtual CPU devices, float32 matmuls at full precision, cheap compiles."""

import contextlib
import os

# XLA's CPU code generation for the whole session (read once, when jax starts its backend): the legacy
# elemental emitters compile the suite's tiny programs ~3x faster than the MLIR fusion emitters (a tiny DPO
# train step: 3 s instead of 10-12 s), and compiling, not running, is what the suite spends its time on.
# Results agree to float32 rounding; subprocesses inherit XLA_FLAGS, so they compile alike.
CHEAP_CODEGEN_FLAG = "--xla_cpu_use_fusion_emitters=false"

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "--xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]:  # a user's own choice is kept
    os.environ["XLA_FLAGS"] += " " + CHEAP_CODEGEN_FLAG
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# flavour -> (transformers class name, config class name, config overrides)
TINY_FLAVOURS = {
    "llama_gqa": ("LlamaForCausalLM", "LlamaConfig", dict(tie_word_embeddings=False)),
    "qwen2_tied": ("Qwen2ForCausalLM", "Qwen2Config", dict(tie_word_embeddings=True)),
    "llama3_rope": ("LlamaForCausalLM", "LlamaConfig", dict(
        tie_word_embeddings=False, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64})),
    "llama_linear_rope": ("LlamaForCausalLM", "LlamaConfig", dict(rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(sliding_window=None, head_dim=16)),
    "llama_bias": ("LlamaForCausalLM", "LlamaConfig", dict(attention_bias=True, mlp_bias=True)),
    "llama_score": ("LlamaForSequenceClassification", "LlamaConfig", dict(num_labels=1)),
}


def _byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (every text encodes) and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    template = (
        "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=["<|user|>", "<|assistant|>"])
    fast.chat_template = template
    return fast


@pytest.fixture(scope="session")
def byte_tokenizer():
    return _byte_tokenizer()


@pytest.fixture(scope="session")
def tiny_hf_checkpoint(tmp_path_factory):
    """`make(flavour) -> Path`: a tiny random transformers checkpoint (all weights perturbed) with a tokenizer."""
    import torch
    import transformers

    made: dict[str, Path] = {}

    def make(flavour: str) -> Path:
        if flavour not in made:
            cls_name, cfg_name, overrides = TINY_FLAVOURS[flavour]
            config = getattr(transformers, cfg_name)(**{**TINY, **overrides})
            torch.manual_seed(len(made) + 1)
            model = getattr(transformers, cls_name)(config).eval()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn_like(p))
            path = tmp_path_factory.mktemp(flavour) / "model"
            model.save_pretrained(path)
            _byte_tokenizer().save_pretrained(path)
            made[flavour] = path
        return made[flavour]

    return make


@contextlib.contextmanager
def fast_compiles(tmp_path_factory):
    """XLA's cheaper optimisation level and a persistent compilation cache shared by every module and
    xdist worker of the session (a user-configured cache is left as it is); both restored on exit."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    settings = {"jax_disable_most_optimizations": True}
    if not jax.config.values["jax_compilation_cache_dir"]:
        settings.update({"jax_compilation_cache_dir": str(_session_cache_dir(tmp_path_factory)),
                         "jax_persistent_cache_min_compile_time_secs": 0.0,
                         "jax_persistent_cache_min_entry_size_bytes": 0})
    old = {k: jax.config.values[k] for k in settings}
    for k, v in settings.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        for k, v in old.items():
            jax.config.update(k, v)
        compilation_cache.reset_cache()


def _session_cache_dir(tmp_path_factory) -> Path:
    """One cache folder for the whole run: under xdist, in the folder the workers' temp roots share."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "xla_cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module", autouse=True)
def _compile_mode(request, tmp_path_factory):
    """The suite runs tiny models, so compiling, not running, is what costs: every module compiles with
    `fast_compiles` unless it is marked `optimized_xla`."""
    if request.node.get_closest_marker("optimized_xla"):
        yield
        return
    with fast_compiles(tmp_path_factory):
        yield


@pytest.fixture(scope="module")
def subprocess_env(_compile_mode):
    """Environment for `jaxalign` subprocesses that compiles like this module (XLA level, matmul
    precision, the session's compilation cache): they reuse its compilations and compute bit-identical
    numbers."""
    import jax

    values = jax.config.values
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), JAX_PLATFORMS="cpu",
               JAX_DEFAULT_MATMUL_PRECISION=str(values["jax_default_matmul_precision"]),
               JAX_DISABLE_MOST_OPTIMIZATIONS="1" if values["jax_disable_most_optimizations"] else "0")
    if values["jax_compilation_cache_dir"]:
        env.update(JAX_COMPILATION_CACHE_DIR=values["jax_compilation_cache_dir"],
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env
