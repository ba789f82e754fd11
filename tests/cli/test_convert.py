"""`jaxalign convert` and `jaxalign prune` from the command line."""

import json

from safetensors.numpy import load_file

from jaxalign.cli.main import main


def test_convert_hf_to_bfloat16_and_verify(tiny_hf_checkpoint, tmp_path, capsys):
    out = tmp_path / "bf16"
    assert main(["convert", str(tiny_hf_checkpoint("llama_gqa")), str(out), "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_file(out / "model.safetensors")["model.norm.weight"].dtype.name == "bfloat16"
    f32 = tmp_path / "f32"
    assert main(["convert", str(tiny_hf_checkpoint("llama_gqa")), str(f32), "--verify", "--atol", "1e-4"]) == 0
    assert "verification passed" in capsys.readouterr().out


def test_convert_refuses_to_overwrite(tiny_hf_checkpoint, tmp_path, capsys):
    out = tmp_path / "x"
    out.mkdir()
    (out / "file").write_text("keep")
    assert main(["convert", str(tiny_hf_checkpoint("llama_gqa")), str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "file").read_text() == "keep"


def test_prune_by_fraction(tiny_hf_checkpoint, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["prune", str(tiny_hf_checkpoint("llama_gqa")), str(out), "--layers", "0"]) == 0
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert "dropped layers [0]" in capsys.readouterr().out


def test_convert_missing_source_is_one_line_error(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.gguf"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxalign convert: error:") and "missing.gguf" in err and "\n" not in err
