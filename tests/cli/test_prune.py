"""`jaxalign prune` by importance from the command line, and the pipeline's prune stage with width settings."""

import json

from jaxalign.cli.main import main
from jaxalign.config import load_config
from jaxalign.pipeline.runner import PRUNE_PROVENANCE, prune_provenance, run_prune


def _prompts(tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Why is the sky blue?", "Name a prime.", "Hi"]))
    return str(path)


def test_width_and_depth_by_importance_end_to_end(tiny_hf_checkpoint, tmp_path, capsys):
    out = tmp_path / "student"
    argv = ["prune", str(tiny_hf_checkpoint("llama_gqa")), str(out), "--layers", "1", "--mlp-fraction", "0.25",
            "--heads-fraction", "0.5", "--hidden-fraction", "0.125", "--calibration", _prompts(tmp_path),
            "--calibration-size", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("dropped layers [1]; removed 8 hidden channels, 24 MLP channels and 1 KV groups per layer")
    hf = json.loads((out / "config.json").read_text())
    assert (hf["num_hidden_layers"], hf["hidden_size"], hf["intermediate_size"], hf["num_attention_heads"],
            hf["num_key_value_heads"], hf["head_dim"]) == (1, 56, 72, 2, 1, 16)
    stats = json.loads((out / "importance.json").read_text())
    assert stats["prompts"] == 2 and len(stats["mlp"]) == 2 and len(stats["mlp"][0]) == 96


def test_bad_heads_fraction_is_one_line_and_writes_nothing(tiny_hf_checkpoint, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["prune", str(tiny_hf_checkpoint("llama_gqa")), str(out), "--heads-fraction", "0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "heads_fraction=0.3 of 4 heads removes 1: heads go in whole KV groups" in err
    assert not out.exists()


def test_nothing_to_prune_is_refused(tiny_hf_checkpoint, tmp_path, capsys):
    assert main(["prune", str(tiny_hf_checkpoint("llama_gqa")), str(tmp_path / "o")]) == 2
    assert "nothing to prune" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_pipeline_stage_prunes_width_and_records_the_settings(tiny_hf_checkpoint, tmp_path):
    prompts = _prompts(tmp_path)
    config = load_config(None, [f"teacher.path={tiny_hf_checkpoint('qwen2_tied')}", f"prune.output={tmp_path / 'p'}",
                                "prune.fraction=0", "prune.mlp_fraction=0.5", f"prune.calibration={prompts}",
                                "prune.calibration_size=3", "logging.progress_bar=false"], stage="prune")
    path, dropped = run_prune(config)
    assert dropped == [] and json.loads((path / "config.json").read_text())["intermediate_size"] == 48
    record = json.loads((path / PRUNE_PROVENANCE).read_text())
    assert record["prune.mlp_fraction"] == 0.5 and record["prune.calibration_size"] == 3
    assert record == json.loads(json.dumps(prune_provenance(config)))
    other = load_config(None, [f"teacher.path={tiny_hf_checkpoint('qwen2_tied')}", f"prune.output={tmp_path / 'p'}",
                               "prune.fraction=0", "prune.mlp_fraction=0.5", f"prune.calibration={prompts}",
                               "prune.calibration_size=2"], stage="prune")
    assert prune_provenance(other) != record  # a different calibration set is a different student
