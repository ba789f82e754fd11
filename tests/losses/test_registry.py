"""jaxalign.losses.registry: loss families by name."""

import pytest

from jaxalign.losses import (
    LOSSES,
    bradley_terry_loss,
    dadpo_loss,
    difference_model_loss,
    dpo_loss,
    get_loss,
    kto_loss,
    register_loss,
    rrhf_loss,
    sft_loss,
)


def test_registry_maps_names_to_loss_functions():
    expected = {
        "dpo": dpo_loss,
        "dadpo": dadpo_loss,
        "kto": kto_loss,
        "rrhf": rrhf_loss,
        "sft": sft_loss,
        "reward_model": bradley_terry_loss,
        "bradley_terry": bradley_terry_loss,
        "difference_model": difference_model_loss,
    }
    for name, fn in expected.items():
        assert LOSSES[name] is fn and get_loss(name) is fn


def test_unknown_name_raises_listing_registered_names():
    with pytest.raises(ValueError, match="unknown loss name 'dpoo'.*dadpo.*dpo.*kto"):
        get_loss("dpoo")


def test_register_loss_refuses_silent_overwrite():
    with pytest.raises(ValueError, match="already registered"):
        register_loss("dpo", kto_loss)
    register_loss("_test_only", kto_loss)
    try:
        assert get_loss("_test_only") is kto_loss
    finally:
        del LOSSES["_test_only"]
