"""load_pretrained / save_pretrained: round trips, sharded files, mesh placement and clear errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from jaxalign.models import CheckpointError, ConfigError, load_pretrained, save_pretrained
from jaxalign.parallel.mesh import make_mesh


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("flavour", ["llama_gqa", "qwen2_tied", "llama_score"])
def test_round_trip_is_bit_identical(tiny_hf_checkpoint, tmp_path, flavour):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    src = tiny_hf_checkpoint(flavour)
    model, tokenizer = load_pretrained(src)
    out = save_pretrained(model, tokenizer, tmp_path / "out")
    before, after = _tensors(src), _tensors(out)
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].dtype == after[name].dtype and np.array_equal(before[name], after[name]), name
    cls = AutoModelForSequenceClassification if flavour == "llama_score" else AutoModelForCausalLM
    ids = torch.tensor(np.random.RandomState(0).randint(3, 320, (2, 10)))
    with torch.no_grad():
        a = cls.from_pretrained(src).eval()(ids).logits
        b = cls.from_pretrained(out).eval()(ids).logits
    assert torch.equal(a, b)
    assert tokenizer("hello")["input_ids"] == load_pretrained(out)[1]("hello")["input_ids"]


def test_sharded_save_writes_index_and_loads_back(tiny_hf_checkpoint, tmp_path):
    model, tokenizer = load_pretrained(tiny_hf_checkpoint("llama_gqa"))
    out = save_pretrained(model, tokenizer, tmp_path / "sharded", max_shard_size=60_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    again, _ = load_pretrained(out)
    ids = np.arange(20, dtype=np.int32).reshape(2, 10)
    np.testing.assert_array_equal(np.asarray(again(ids)), np.asarray(model(ids)))


def test_load_onto_mesh_shards_parameters_and_keeps_logits(tiny_hf_checkpoint):
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sharded, _ = load_pretrained(tiny_hf_checkpoint("llama_gqa"), mesh=mesh, tokenizer=False)
    plain, _ = load_pretrained(tiny_hf_checkpoint("llama_gqa"), tokenizer=False)
    q = sharded.layers.q_proj[...]
    assert tuple(q.sharding.spec) == (None, "fsdp", "tensor")
    assert q.addressable_shards[0].data.shape == (2, 32, 32)
    ids = np.arange(20, dtype=np.int32).reshape(2, 10)
    np.testing.assert_allclose(np.asarray(sharded(ids)), np.asarray(plain(ids)), atol=1e-5)


def test_save_is_atomic_and_refuses_to_overwrite(tiny_hf_checkpoint, tmp_path):
    model, tokenizer = load_pretrained(tiny_hf_checkpoint("llama_gqa"))
    target = tmp_path / "exists"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        save_pretrained(model, tokenizer, target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["exists"]  # no temporary folder left behind


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_safetensors_is_named(tiny_hf_checkpoint, tmp_path):
    folder = _copy(tiny_hf_checkpoint("llama_gqa"), tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model.safetensors or model.safetensors.index.json found"):
        load_pretrained(folder)


def test_truncated_safetensors_is_named(tiny_hf_checkpoint, tmp_path):
    folder = _copy(tiny_hf_checkpoint("llama_gqa"), tmp_path / "m")
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated safetensors file: tensor '.*' ends at byte"):
        load_pretrained(folder)


def test_wrong_shape_names_the_tensor(tiny_hf_checkpoint, tmp_path):
    folder = _copy(tiny_hf_checkpoint("llama_gqa"), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 128
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.0.mlp.gate_proj.weight' has shape \[96, 64\], expected \[128, 64\]"):
        load_pretrained(folder)


def test_missing_tensor_is_named(tiny_hf_checkpoint, tmp_path):
    from safetensors.numpy import save_file

    folder = _copy(tiny_hf_checkpoint("llama_gqa"), tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.norm.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensor 'model.norm.weight' is missing"):
        load_pretrained(folder)


def test_unsupported_architecture_is_refused(tiny_hf_checkpoint, tmp_path):
    folder = _copy(tiny_hf_checkpoint("llama_gqa"), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"], config["model_type"] = ["GemmaForCausalLM"], "gemma"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="'GemmaForCausalLM' is not supported; supported: "):
        load_pretrained(folder)


def test_folder_without_tokenizer_is_named(tiny_hf_checkpoint, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_hf_checkpoint("llama_gqa") / name, folder / name)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_pretrained(folder)
    model, tokenizer = load_pretrained(folder, tokenizer=False)
    assert tokenizer is None and model.config.num_layers == 2


def test_not_a_folder_nor_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_pretrained(str(tmp_path / "nope"))
