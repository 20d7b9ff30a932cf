"""enhance.py on real (synthetic) DNG files decoded by rawpy, with a narrow network."""
import numpy as np
import png
import pytest
import tifffile
import torch
import yaml

import enhance
from harness.evaluate import predict
from data.raw_cache import RawCache
from data.sid import SIDEvalDataset, read_list
from data.synthetic import write_dng
from models import build_model

WIDTH = 0.125


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    """A narrow float network saved as plain weights, and a config naming its width."""
    folder = tmp_path_factory.mktemp("enhance_model")
    torch.manual_seed(0)
    model = build_model("dbf_dble", WIDTH).eval()
    torch.save({"model": model.state_dict()}, folder / "weights.pth")
    (folder / "run.yaml").write_text(yaml.safe_dump({"model": {"name": "dbf_dble", "width": WIDTH}}))
    return model, folder / "weights.pth", folder / "run.yaml"


def _read_png(path) -> np.ndarray:
    width, height, rows, info = png.Reader(filename=str(path)).read()
    assert info["bitdepth"] == 16 and info["planes"] == 3
    return np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, 3)


def test_output_equals_test_prediction(network, synthetic_sid_root, synthetic_sid_cache_dir, tmp_path):
    model, weights, config = network
    pair = read_list(synthetic_sid_root / "Sony_test_list.txt", synthetic_sid_root)[0]
    item = SIDEvalDataset([pair], RawCache(synthetic_sid_cache_dir), "mosaic")[0]
    with torch.no_grad():  # what harness.evaluate.evaluate (test.py) scores for this file
        expected = predict(model, item["input"][None])[1][0].clamp(0, 1).permute(1, 2, 0).numpy()
    common = [str(pair.short_path), "--checkpoint", str(weights), "--config", str(config)]
    enhance.main(common + ["--out", str(tmp_path / "png"), "--ratio", str(pair.ratio)])
    got = _read_png(tmp_path / "png" / f"{pair.short_path.stem}.png") / 65535.0
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5  # 16-bit rounding is at most 0.5 / 65535
    # The ratio derived from the DNG's exposure time gives the same image; TIFF holds the same values.
    enhance.main(common + ["--out", str(tmp_path / "tif"), "--format", "tiff",
                           "--reference-exposure", str(pair.gt_exposure)])
    tiff = tifffile.imread(tmp_path / "tif" / f"{pair.short_path.stem}.tif")
    # (LibRaw reads the exposure time as float32: the derived ratio may differ in its 8th digit)
    assert tiff.dtype == np.uint16 and np.abs(tiff / 65535.0 - expected).max() <= 2e-5


def test_onnx_model_enhances_a_folder(network, synthetic_sid_root, synthetic_sid_cache_dir, tmp_path):
    import onnxruntime as ort
    from deploy import export_full_precision
    from data.sid import normalise_mosaic
    from models import split_outputs
    model, _, _ = network
    export_full_precision(model, tmp_path / "fp.onnx")
    pairs = read_list(synthetic_sid_root / "Sony_test_list.txt", synthetic_sid_root)[:2]
    folder = tmp_path / "raws"
    folder.mkdir()
    for pair in pairs:
        (folder / pair.short_path.name).symlink_to(pair.short_path)
    written = enhance.main([str(folder), "--onnx", str(tmp_path / "fp.onnx"), "--out", str(tmp_path / "out"),
                            "--ratio", "100", "--tile-size", "0"])
    assert sorted(p.name for p in written) == sorted(f"{p.short_path.stem}.png" for p in pairs)
    # Each image is what an onnxruntime session of the same model gives on the whole frame.
    session = ort.InferenceSession(str(tmp_path / "fp.onnx"), providers=["CPUExecutionProvider"])
    for pair in pairs:
        mosaic, info = RawCache(synthetic_sid_cache_dir).mosaic(pair.short_path)
        x = normalise_mosaic(mosaic, info, 100.0)[None, None]
        outputs = [torch.from_numpy(o) for o in session.run(None, {session.get_inputs()[0].name: x})]
        expected = split_outputs(tuple(outputs))[1][0].clamp(0, 1).permute(1, 2, 0).numpy()
        got = _read_png(tmp_path / "out" / f"{pair.short_path.stem}.png") / 65535.0
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5  # 16-bit rounding is at most 0.5 / 65535


def _one_line_error(argv, capsys) -> str:
    assert enhance.run_entry_point(enhance.main, argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]  # not tqdm's
    assert len(errors) == 1 and errors[0].startswith("error: ")
    return errors[0]


def test_bad_inputs_get_one_line_errors(network, synthetic_sid_root, tmp_path, capsys):
    _, weights, config = network
    model_flags = ["--checkpoint", str(weights), "--config", str(config), "--out", str(tmp_path / "out")]
    garbage = tmp_path / "broken.ARW"
    garbage.write_bytes(b"not a raw file" * 100)
    assert str(garbage) in _one_line_error([str(garbage), "--ratio", "100"] + model_flags, capsys)

    short = read_list(synthetic_sid_root / "Sony_test_list.txt", synthetic_sid_root)[0].short_path
    message = _one_line_error([str(short)] + model_flags, capsys)
    assert str(short) in message and "--ratio" in message and "--reference-exposure" in message

    odd = tmp_path / "odd.dng"
    write_dng(odd, np.full((96, 100), 600, np.uint16), white_balance_gains=(2.0, 1.0, 1.5), exposure_time=0.1,
              iso=100, f_number=4.0)
    message = _one_line_error([str(odd), "--ratio", "100"] + model_flags, capsys)
    assert str(odd) in message and "96x100" in message and "--crop" in message
    assert not (tmp_path / "out" / "odd.png").exists()
    enhance.main([str(odd), "--ratio", "100", "--crop"] + model_flags)  # cut to 96x96, as test.py would
    assert _read_png(tmp_path / "out" / "odd.png").shape == (96, 96, 3)
