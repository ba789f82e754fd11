"""``describe_keys`` / ``--help-config`` / the markdown config reference."""

from jaxalign.config import config_reference_markdown, describe_keys, format_keys, write_config_reference
from jaxalign.config.loader import all_keys


def test_every_key_described_with_type_default_and_doc():
    keys = describe_keys()
    assert [k.key for k in keys] == list(all_keys())
    missing = [k.key for k in keys if not k.doc]
    assert not missing, f"fields without a docstring: {missing}"
    by_key = {k.key: k for k in keys}
    assert (by_key["optimizer.lr"].type, by_key["optimizer.lr"].default) == ("a float", 5e-7)
    assert set(by_key["loss.name"].choices) >= {"sft", "dpo", "dadpo", "kto", "rrhf", "reward_model", "difference_model"}
    assert by_key["loss.beta"].bounds == "> 0" and by_key["loss.label_smoothing"].bounds == ">= 0 and < 0.5"
    assert by_key["data.buckets"].type == "a list of integers or null"
    assert by_key["loss.rdo"].section and by_key["generate.models"].section
    assert "generate.models[].name" in by_key and "loss.rdo.model.path" in by_key


def test_help_config_section_filter():
    text = format_keys("loss.rdo")
    assert "loss.rdo.transform = 'sigmoid'" in text and "optimizer.lr" not in text
    assert "[difference_model | reward_model | dataset]" in text
    assert format_keys("nope").startswith("no config keys")


def test_markdown_reference_lists_every_leaf_key(tmp_path):
    md = config_reference_markdown()
    for k in describe_keys():
        if not k.section:
            assert f"`{k.key}`" in md
    assert "## `loss.rdo.model`" in md and "## `generate.models`" in md
    path = write_config_reference(tmp_path / "docs" / "config_reference.md")
    assert path.read_text() == md


def test_committed_reference_is_current(tmp_path):
    from pathlib import Path

    from jaxalign.config import write_config_reference

    fresh = write_config_reference(tmp_path / "ref.md")
    committed = Path(__file__).resolve().parents[2] / "docs" / "config_reference.md"
    assert Path(fresh).read_text() == committed.read_text(), "regenerate docs/config_reference.md"
