"""The Python API (lowlight_qat): the docs/api.md example runs exactly as written, and the steps keep the
promises their docstrings make."""
import json

import pytest
import torch

import lowlight_qat as lq
from quant import fake_quantizers
from test_train import REPOSITORY_ROOT


def readme_python_example() -> str:
    section = (REPOSITORY_ROOT / "docs" / "api.md").read_text().split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = readme_python_example()
    assert len(code.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)  # the example writes onnx/tiny_w4a4 relative to where it runs
    namespace = {"__name__": "readme_example"}
    exec(compile(code, "docs/api.md (Python API)", "exec"), namespace)

    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == "True"  # export_onnx's report: every onnxruntime check passed
    means = eval(printed[-2], {"nan": float("nan")})
    assert means["images"] == 4 and 0 < means["psnr"] < 100
    qmodel, top = namespace["qmodel"], namespace["top"]
    bits = {name: (quantizer.quant_max - quantizer.quant_min + 1).bit_length() - 1
            for name, quantizer in fake_quantizers(qmodel).items()}
    assert bits["mosaic_post_act_fake_quantizer"] == 10
    assert sum(b == 4 for b in bits.values()) > 10  # the W4A4 scheme elsewhere
    assert set(namespace["distillation"].student_taps.outputs) == set(top)
    report = json.loads((tmp_path / "onnx" / "tiny_w4a4" / "export_report.json").read_text())
    assert set(report["models"]) == {"full_precision", "qdq"} and report["input_kind"] == "mosaic"


def test_quantize_leaves_the_float_model_untouched():
    model = lq.build_network("sid_unet", width=0.125)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    qmodel = lq.calibrate(lq.quantize(model, "w4a4_lsq"), [torch.rand(1, 4, 32, 32)])
    optimizer = torch.optim.SGD(lq.param_groups(qmodel, lr=0.1), lr=0.1)
    qmodel(torch.rand(1, 4, 32, 32)).sum().backward()
    optimizer.step()
    assert not any("fake_quant" in name for name, _ in model.named_modules())
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_unknown_scheme_name_lists_the_ready_ones():
    model = lq.build_network("sid_unet", width=0.125)
    with pytest.raises(ValueError, match=r"no ready scheme 'w4a4_lsqq'; did you mean 'w4a4_lsq'\? ready: .*w8a8"):
        lq.quantize(model, "w4a4_lsqq")
