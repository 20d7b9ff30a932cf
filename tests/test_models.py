"""The networks users load published weights into: exact parameter counts, the authors' key
names, strict loading with readable mismatch errors, and torch.fx tracing (MQBench needs it)."""
import pytest
import torch
import torch.fx

from checkpoints.safe_load import CheckpointError
from models import build_model, split_outputs
from checkpoints.weights import WeightsError, load_weights

# Key names of the published checkpoint (SID_weights_690000.pth), one per kind of module.
PUBLISHED_KEYS = [
    "DBF.DBF_conv1.Conv1.weight", "DBF.DBF_conv9.Conv2.bias", "DBF.DBF_upv5.weight", "DBF.DBF_out.weight",
    "DBLE.color_conv1.Conv1.weight", "DBLE.mono_conv5.Conv2.bias", "DBLE.color_up5.weight", "DBLE.mono_up5.bias",
    "DBLE.channel_attention6.conv_du.0.weight", "DBLE.channel_attention9.conv_du.2.bias",
    "DBLE.dual_conv6.Conv1.weight", "DBLE.dual_up8.weight", "DBLE.dual_conv9.Conv2.weight", "DBLE.DBLE_out.bias",
]


def parameter_count(module):
    return sum(p.numel() for p in module.parameters())


def test_dbf_dble_matches_the_published_network():
    model = build_model("dbf_dble")
    assert parameter_count(model) == 15_013_791
    assert parameter_count(model.DBF) == 485_737
    assert parameter_count(model.DBLE) == 14_528_054
    keys = set(model.state_dict())
    assert set(PUBLISHED_KEYS) <= keys
    assert all(key.startswith(("DBF.", "DBLE.")) for key in keys)


def test_sid_unet_size_and_shapes():
    model = build_model("sid_unet", width=0.25)
    assert parameter_count(build_model("sid_unet")) == 7_760_748
    rgb = model(torch.rand(1, 4, 32, 48))
    assert rgb.shape == (1, 3, 64, 96)


def test_forward_shapes_and_fx_tracing():
    model = build_model("dbf_dble", width=0.25)
    x = torch.rand(2, 1, 64, 96)
    mono, rgb = split_outputs(model(x))
    assert mono.shape == (2, 1, 64, 96) and rgb.shape == (2, 3, 64, 96)
    traced = torch.fx.symbolic_trace(model)
    traced_mono, traced_rgb = traced(x)
    assert torch.equal(traced_rgb, rgb) and torch.equal(traced_mono, mono)


def test_unknown_model_name_lists_choices():
    with pytest.raises(ValueError, match="choose one of"):
        build_model("unet")


def test_authors_format_and_plain_state_dict_load_strictly(tmp_path):
    source = build_model("dbf_dble", width=0.25)
    authors = tmp_path / "SID_weights.pth"
    torch.save({"model": source.state_dict()}, authors)
    plain = tmp_path / "plain.pth"
    torch.save(source.state_dict(), plain)
    x = torch.rand(1, 1, 64, 64)
    for path in (authors, plain):
        target = load_weights(build_model("dbf_dble", width=0.25), path)
        assert torch.equal(target(x)[1], source(x)[1])


def test_mismatched_weights_name_missing_and_unexpected_keys(tmp_path):
    state = build_model("dbf_dble", width=0.25).state_dict()
    state.pop("DBF.DBF_out.weight")
    state["DBF.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError) as error:
        load_weights(build_model("dbf_dble", width=0.25), path)
    message = str(error.value)
    assert "missing 1: DBF.DBF_out.weight" in message and "unexpected 1: DBF.extra.weight" in message
    assert "\n" not in message
    with pytest.raises(WeightsError, match="shape mismatch"):
        load_weights(build_model("dbf_dble", width=0.5), tmp_path / "broken.pth")


def test_unreadable_weights_file_is_named(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth: not a readable torch file"):
        load_weights(build_model("dbf_dble", width=0.25), path)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_weights(build_model("dbf_dble", width=0.25), tmp_path / "absent.pth")
