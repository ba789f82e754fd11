"""jaxalign.data.config: defaults, validation naming the field, buckets, OmegaConf embedding."""

import dataclasses

import pytest

from jaxalign.data import DataConfig, DataError


def test_auto_buckets_are_powers_of_two_up_to_max_length():
    assert DataConfig(max_length=1000, min_bucket=128).bucket_lengths() == [128, 256, 512, 1000]
    assert DataConfig(max_length=512).bucket_lengths() == [64, 128, 256, 512]


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"max_length": 64, "max_prompt_length": 64}, "max_prompt_length"),
        ({"buckets": [128], "max_length": 256}, "buckets"),
        ({"truncation": "middle"}, "truncation"),
        ({"on_bad_row": "ignore"}, "on_bad_row"),
        ({"packing": True, "task": "kto"}, "packing"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_validate_names_the_field(kw, match):
    with pytest.raises(DataError, match=match):
        DataConfig(**kw).validate()


def test_defaults_validate():
    cfg = DataConfig().validate()
    assert cfg.prompt_limit == 512 and cfg.segments_per_row == 1


def test_embeds_in_omegaconf_structured_config():
    from omegaconf import OmegaConf

    @dataclasses.dataclass
    class Root:
        data: DataConfig = dataclasses.field(default_factory=DataConfig)

    overrides = OmegaConf.from_dotlist(["data.buckets=[64,128]", "data.packing=true"])
    conf = OmegaConf.merge(OmegaConf.structured(Root), overrides)
    cfg = OmegaConf.to_object(conf).data
    assert isinstance(cfg, DataConfig) and cfg.buckets == [64, 128] and cfg.packing is True
