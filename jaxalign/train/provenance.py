"""Provenance of derived files: what made them, recorded beside them and compared by consumers.

A record is a flat JSON dict ``{setting: value}`` — config keys (``data.max_length``),
model fingerprints (``reference``), source digests (``source``) — written to
``<output>.provenance.json`` (outputs of ``generate``/``score``), into the
checkpoint meta (training) or to ``hf/jaxalign_provenance.json`` (exports).
A consumer calls :func:`check_match`, which raises one line naming the first
differing setting and how to regenerate.

Hashing stays cheap on large folders: files up to ``FULL_HASH_LIMIT`` bytes are
hashed whole (SHA-256); larger ones (weights of a 7B model, big datasets) by
their size plus a sampled digest of ``SAMPLES`` blocks of ``BLOCK`` bytes spread
evenly over the file (first and last block included). Modification times are
not used, so a copied folder keeps its fingerprint. A 7B folder costs ~ 30 MiB
of reads per weight-file set instead of 14 GB.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from jaxalign.data.errors import DataError
from jaxalign.io.atomic import write_json_atomic

__all__ = ["FULL_HASH_LIMIT", "ProvenanceError", "check_match", "diff", "file_digest", "files_digest", "flatten",
           "model_fingerprint", "read_sidecar", "sidecar_path", "write_record", "write_sidecar"]

FULL_HASH_LIMIT = 256 * 1024**2
BLOCK = 1024**2
SAMPLES = 16

#: Files of a model folder that decide its values (weights, architecture, tokenizer, chat template).
_MODEL_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer.json", "tokenizer.model",
                   "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json", "chat_template.*")
#: The subset that decides tokenisation and the chat template.
_TOKENIZER_PATTERNS = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "merges.txt",
                       "special_tokens_map.json", "chat_template.*")


class ProvenanceError(DataError):
    """A derived file was made with other settings or inputs than the run that reads it."""


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex, 16 chars) of a file: whole up to ``FULL_HASH_LIMIT``, else size + ``SAMPLES`` sampled blocks."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(BLOCK * 8), b""):
                h.update(chunk)
        else:
            h.update(f"sampled:{size}".encode())
            for i in range(SAMPLES):
                f.seek((size - BLOCK) * i // (SAMPLES - 1))
                h.update(f.read(BLOCK))
    return h.hexdigest()[:16]


def files_digest(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """One digest of several files (names relative to ``root`` and contents), order-independent."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        name = str(p.relative_to(root)) if root is not None else p.name
        h.update(f"{name}={file_digest(p)};".encode())
    return h.hexdigest()[:16]


def _matching(folder: Path, patterns: Sequence[str]) -> list[Path]:
    return sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file()})


def model_fingerprint(folder: str | os.PathLike, *, tokenizer_only: bool = False) -> str:
    """Digest of a model folder's config, weight, tokenizer and chat-template files (see the module doc)."""
    folder = Path(folder)
    files = _matching(folder, _TOKENIZER_PATTERNS if tokenizer_only else _MODEL_PATTERNS)
    if not files:
        raise DataError(f"{folder}: no model or tokenizer files to fingerprint")
    return files_digest(files, folder)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"data": {"max_length": 64}}`` -> ``{"data.max_length": 64}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def diff(recorded: Mapping[str, Any], current: Mapping[str, Any], *, ignore: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """``(key, recorded, current)`` for every key whose values differ, sorted; keys under a prefix in
    ``ignore`` (``"logging."`` or an exact key) are skipped. A key missing on one side counts as ``None``."""
    def ignored(key: str) -> bool:
        return any(key == p or (p.endswith(".") and key.startswith(p)) for p in ignore)

    keys = sorted(set(recorded) | set(current))
    return [(k, recorded.get(k), current.get(k)) for k in keys
            if not ignored(k) and _norm(recorded.get(k)) != _norm(current.get(k))]


def _norm(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def describe_diff(changes: Sequence[tuple[str, Any, Any]], limit: int = 3) -> str:
    """``"data.max_length: 64 -> 512, loss.beta: 0.1 -> 0.2 (and 2 more)"``."""
    shown = ", ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in changes[:limit])
    return shown + (f" (and {len(changes) - limit} more)" if len(changes) > limit else "")


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def check_match(what: str, recorded: Mapping[str, Any], current: Mapping[str, Any], *, regenerate: str,
                override: str = "data.ignore_provenance=true", ignore: Sequence[str] = ()) -> None:
    """Raise ``ProvenanceError`` when ``recorded`` and ``current`` differ: one line naming the first
    differing setting(s), how to regenerate ``what``, and the override."""
    changes = diff(recorded, current, ignore=ignore)
    if changes:
        raise ProvenanceError(f"{what} was made with other settings than this run ({describe_diff(changes)}); "
                              f"{regenerate}, or set {override} to use it anyway")


def sidecar_path(output: str | os.PathLike) -> Path:
    """Where the provenance of ``output`` lives: ``<output>.provenance.json``."""
    output = Path(output)
    return output.with_name(output.name + ".provenance.json")


def read_sidecar(output: str | os.PathLike) -> dict | None:
    """The provenance recorded for ``output``, or ``None`` when there is none."""
    path = sidecar_path(output)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable provenance record ({e}); delete it and {Path(output).name} to regenerate") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: provenance record is not a JSON object; delete it and {Path(output).name} to regenerate")
    return record


def write_record(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write a provenance record to ``path`` atomically: sorted keys, values JSON cannot hold as ``str``."""
    return write_json_atomic(path, record, indent=1, sort_keys=True, default=str)


def write_sidecar(output: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Record ``record`` as the provenance of ``output``."""
    return write_record(sidecar_path(output), record)


# --------------------------------------------------------------------------- records of a run


def data_settings(data) -> dict[str, Any]:
    """The ``DataConfig`` settings that change token ids and hence every log-prob computed from them."""
    return {"data.max_length": data.max_length, "data.max_prompt_length": data.prompt_limit,
            "data.truncation": data.truncation, "data.add_bos": data.add_bos,
            "data.use_chat_template": data.use_chat_template, "data.format": data.format}


def source_digest(path: str, *, split: str = "train", data_files: Sequence[str] | None = None) -> str:
    """Content digest of a dataset: its local files (see ``file_digest``), or ``hub:<id>[<split>]`` for a hub id."""
    from jaxalign.data.sources import _looks_like_path, _resolve_local

    if path.startswith("asset:"):
        from jaxalign.pipeline.rows import asset_path

        path = str(asset_path(path[len("asset:"):]))
    if os.path.exists(path) or data_files:
        return files_digest(_resolve_local(path, split, data_files))
    if _looks_like_path(path):
        raise DataError(f"data.path: no such file or directory: {path}")
    return f"hub:{path}[{split}]"


def spec_fingerprint(spec, *, seed: int = 0, tokenizer_only: bool = False) -> str | None:
    """Fingerprint of the model (or only the tokenizer) a ``ModelSpec`` names; ``None`` when it names none."""
    from jaxalign.models.resolve import resolve_model_path

    if tokenizer_only:
        source = spec.tokenizer or spec.path
        return model_fingerprint(resolve_model_path(source), tokenizer_only=True) if source else None
    if spec.path:
        return model_fingerprint(resolve_model_path(spec.path))
    if spec.preset:
        return f"preset:{spec.preset}:seed{seed}"
    return None
