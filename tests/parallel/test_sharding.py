"""Parameter placement: each device holds its share of the model, and nothing is replicated by accident."""

import jax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from jaxalign.config.presets import preset_hf_config
from jaxalign.models import ModelConfig, init_model
from jaxalign.parallel.mesh import make_mesh
from jaxalign.parallel.sharding import ShardingError, param_name, partition_spec, state_shardings


def _tiny_config():
    return ModelConfig.from_hf_dict(preset_hf_config("tiny"))


def _bytes_per_device(params) -> dict:
    per_device = {}
    for leaf in jax.tree.leaves(params):
        for shard in leaf.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return per_device


@pytest.mark.parametrize("data, fsdp, tensor", [(1, 4, 2), (1, 8, 1), (2, 2, 2), (8, 1, 1)])
def test_each_device_holds_total_over_parameter_shards(data, fsdp, tensor):
    """The weights are split over fsdp x tensor (replicated over data, which is pure data
    parallelism): every device holds exactly (total − R) / (fsdp·tensor) + R bytes, where R, the
    whole (replicated) parameters, are only the norm scales, under 1% of the model."""
    mesh = make_mesh(data, fsdp, tensor)
    _, params = nnx.split(init_model(_tiny_config(), mesh=mesh))
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    whole = {param_name(p): x.nbytes for p, x in jax.tree_util.tree_leaves_with_path(params)
             if len(x.sharding.device_set) == 8 and x.addressable_shards[0].data.nbytes == x.nbytes}
    replicated = sum(whole.values())
    if fsdp * tensor > 1:
        assert whole and all(name.split(".")[-1].endswith("norm") for name in whole), sorted(whole)
        assert replicated < 0.01 * total
    per_device = _bytes_per_device(params)
    assert len(per_device) == 8
    expected = (total - replicated) / (fsdp * tensor) + replicated
    assert all(nbytes == expected for nbytes in per_device.values()), (per_device, expected)


def test_indivisible_dimension_is_an_error_not_a_replication():
    mesh = make_mesh(1, 1, 3)
    with pytest.raises(ShardingError) as err:
        partition_spec(("fsdp", "tensor"), (576, 64), mesh, name="decoder.layers.q_proj")
    message = str(err.value)
    assert message == ("decoder.layers.q_proj of shape (576, 64): dimension 1 (size 64) is not divisible by mesh axis "
                       "tensor=3; set mesh.tensor to a divisor of 64")
    # an axis absent from the annotation, or of size 1, leaves its dimension whole
    assert partition_spec(("fsdp", None), (576, 1), mesh) == PartitionSpec(None, None)


def test_state_shardings_name_the_parameter():
    """mesh.tensor=3 on the tiny model (hidden 64): the error names the first parameter it cannot split."""
    abstract = nnx.eval_shape(lambda: init_model(_tiny_config()))
    _, state = nnx.split(abstract)
    with pytest.raises(ShardingError, match=r"^[a-z_]+(\.[a-z_]+)* of shape \(\d+(, \d+)*\): dimension \d \(size \d+\) is not "
                                            r"divisible by mesh axis tensor=3"):
        state_shardings(state, make_mesh(1, 1, 3))


def test_indivisible_mesh_fails_model_init():
    with pytest.raises(ShardingError, match="not divisible by mesh axis tensor=3"):
        init_model(_tiny_config(), mesh=make_mesh(1, 1, 3))
