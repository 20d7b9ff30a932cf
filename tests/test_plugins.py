"""A network from outside models/, named by import path in the config, goes through every stage
(train, Hessian ranking, QAT with special layers and distillation as a sweep, ONNX export); bad
import paths, broken contracts and untraceable networks stop with one line."""
import csv
import json

import pytest
import torch
import torch.nn as nn
import yaml

from tools import hessian_rank
import sweep
import train
from harness.config import ConfigError, load_config
from harness.runner import run_entry_point
from examples.tiny_raw_net import TinyRawNet
from test_train import REPOSITORY_ROOT, write_run_config

PLUGIN = "examples.tiny_raw_net:TinyRawNet"


def plugin_run_config(folder, data_root, **overrides):
    return write_run_config(folder, data_root, model__name=PLUGIN, model__kwargs={"channels": 8}, model__width=1.0,
                            schedule__epochs=1, schedule__iters_per_epoch=2, data__max_val_pairs=1,
                            data__max_test_pairs=1, output__experiment="plugin_fp", **overrides)


def test_plugin_network_runs_every_stage(synthetic_sid_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # train.py writes onnx/<experiment>.pth relative to the working folder
    fp_config = plugin_run_config(tmp_path, synthetic_sid_root)
    summary = train.main(["--config", str(fp_config)])
    weights = tmp_path / "onnx" / "plugin_fp.pth"
    assert summary["test_images"] == 1 and weights.is_file()
    # The saved weights are the plug-in network's own, loadable strictly into a fresh instance.
    TinyRawNet(channels=8).load_state_dict(torch.load(weights, weights_only=True)["model"])

    hessian_rank.main(["--config", str(fp_config), "--checkpoint", str(weights), "--probes", "1", "--batches", "1",
                       "--crop", "64", "--top-k", "2"])
    hessian_dir = tmp_path / "results" / "plugin_fp" / "hessian"
    ranked = [row["layer"] for row in csv.DictReader((hessian_dir / "hessian_rank.csv").open())]
    assert "decoder1.act2" in ranked and "encoder1.act1" in ranked
    top = yaml.safe_load((hessian_dir / "hessian_topk.yaml").read_text())["distill_config"]
    assert top == ranked[:2]

    # QAT from the float weights, distilled at the Hessian's top-2 layers, with special layers, as a sweep.
    qat_config = tmp_path / "plugin_qat.yaml"
    qat_config.write_text(yaml.safe_dump({
        "config_file_path": [str(fp_config), str(REPOSITORY_ROOT / "configfile" / "scheme_w8a8.yaml"),
                             str(hessian_dir / "hessian_topk.yaml")],
        "quant": True, "quant_teacher": True, "onnx": True,
        "load_model": str(weights), "load_teacher_model": str(weights),
        "extra_quantizer_dict": {"special_layer": {"input_layer": 10, "head": {"weight": "10 per_channel_affine"},
                                                   "decoder1.act2": {"activation": "10 per_tensor_affine"}}},
        "quant_scheme": {"calibration_batches": 1},
    }))
    sweep_file = tmp_path / "plugin_sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"base": str(qat_config), "grid": {"distill_coeff": [0.1]}}))
    rows = sweep.main(["--config", str(sweep_file)])
    assert [row["variant"] for row in rows] == ["distill_coeff=0.1"]
    run_dir = tmp_path / "results" / "plugin_sweep" / "distill_coeff=0.1"
    plan = list(csv.DictReader((run_dir / "quant_plan.csv").open()))
    ten_bit = {(row["kind"], row["layer"], row["override"]) for row in plan if row["bits"] == "10"}
    assert ten_bit == {("input", "mosaic", "input_layer"), ("weight", "head", "head.weight"),
                       ("activation", "decoder1.act2", "decoder1.act2.activation")}
    metrics = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert all(f"distill[{layer}]" in metrics[0] for layer in top)
    report = json.loads((run_dir / "export_report.json").read_text())  # a sweep keeps its variants' exports
    assert report["passed"] and report["input_kind"] == "mosaic" and set(report["models"]) == {"full_precision", "qdq"}


def test_bad_import_paths_name_the_nearest_module_or_class(tmp_path):
    config = write_run_config(tmp_path, tmp_path)
    expected = {
        "examples.tiny_raw_nett:TinyRawNet": "no module 'examples.tiny_raw_nett' in package examples; "
                                             "did you mean 'tiny_raw_net'?",
        "exampels.tiny_raw_net:TinyRawNet": "no module 'exampels' on sys.path or in the current directory; "
                                            "did you mean 'examples'",
        "examples.tiny_raw_net:TinyRawNett": "module examples.tiny_raw_net has no class 'TinyRawNett'; "
                                             "did you mean 'TinyRawNet'?",
        "dbf_dbel": "unknown model 'dbf_dbel'; did you mean 'dbf_dble'?",
    }
    for name, message in expected.items():
        with pytest.raises(ConfigError) as error:
            load_config(config, [f"model.name={name}"], check_files=False)
        assert "config key 'model.name'" in str(error.value) and message in str(error.value)
        assert "\n" not in str(error.value)
    typo = r"'model.kwargs': TinyRawNet has no argument 'chanels'; did you mean 'channels'"
    with pytest.raises(ConfigError, match=typo):
        load_config(config, [f"model.name={PLUGIN}", "model.width=1.0", "model.kwargs={chanels: 8}"], check_files=False)


def test_bad_import_path_stops_train_py_with_one_line(tmp_path, capsys):
    config = write_run_config(tmp_path, tmp_path, model__name="examples.tiny_raw_net:TinyRawNett")
    assert run_entry_point(train.main, ["--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "did you mean 'TinyRawNet'?" in error and "Traceback" not in error


class NoOutputsDeclared(nn.Module):
    input_kind = "mosaic"

    def forward(self, x):
        return x


class HalfResolution(TinyRawNet):
    """Declares RGB at the mosaic's resolution but returns it at half."""

    def forward(self, mosaic):
        return super().forward(mosaic)[..., ::2, ::2]


def test_contract_breaches_are_named_in_one_line(tmp_path):
    config = write_run_config(tmp_path, tmp_path)
    with pytest.raises(ConfigError, match="NoOutputsDeclared declares no outputs; add the class attribute outputs"):
        load_config(config, ["model.name=test_plugins:NoOutputsDeclared"], check_files=False)
    from models import build_model
    with pytest.raises(ValueError, match=r"HalfResolution returned rgb of shape 1x3x32x32 for a 64x64 mosaic .*"
                                         r"the contract wants rgb \(B,3,64,64\)"):
        build_model("test_plugins:HalfResolution", kwargs={"channels": 4})


class DataDependentGate(nn.Module):
    def forward(self, x):
        if x.mean() > 0.5:  # Python control flow on a tensor value: torch.fx cannot trace it
            return x * 0.5
        return x


class GatedRawNet(TinyRawNet):
    def __init__(self, channels=4):
        super().__init__(channels)
        self.gate = DataDependentGate()

    def forward(self, mosaic):
        return super().forward(self.gate(mosaic))


@torch.fx.wrap
def halve_when_bright(x):
    if x.mean() > 0.5:
        return x * 0.5
    return x


class WrappedGate(nn.Module):
    def forward(self, x):
        return halve_when_bright(x)  # the fix the error advises: the trace keeps this as one call


class WrappedGateRawNet(GatedRawNet):
    def __init__(self, channels=4):
        super().__init__(channels)
        self.gate = WrappedGate()


def test_untraceable_network_gets_one_line_error_naming_the_module(capsys):
    import lowlight_qat as lq
    network = lq.build_network("test_plugins:GatedRawNet")  # eager forward works: the contract holds
    batch = {"input": torch.rand(1, 1, 64, 64), "rgb": torch.rand(1, 3, 64, 64)}
    for stage in (lambda: lq.quantize(network), lambda: lq.rank_layers(network, [batch], probes=1, progress=False)):
        with pytest.raises(lq.UntraceableNetworkError) as error:
            stage()
        message = str(error.value)
        assert message.startswith("GatedRawNet: torch.fx cannot trace module 'gate' (DataDependentGate): ")
        assert "torch.where" in message and "torch.fx.wrap" in message and "\n" not in message
    # What a user of an entry point sees: one line and exit status 2, no torch.fx traceback.
    assert run_entry_point(lambda argv: lq.quantize(network), []) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: GatedRawNet: torch.fx cannot trace module 'gate'") and error.count("\n") == 1
    # Following the advice (torch.fx.wrap) makes the same network quantizable.
    qmodel = lq.calibrate(lq.quantize(lq.build_network("test_plugins:WrappedGateRawNet")), [batch])
    assert any(node.name == "halve_when_bright" for node in qmodel.graph.nodes)
