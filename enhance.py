"""Enhance your own low-light raw files (anything rawpy reads: ARW, DNG, NEF, CR2, ...) into 16-bit
PNG or TIFF with a trained network: a float or quantized checkpoint, or an exported ONNX model.

    python enhance.py INPUT [INPUT ...] --checkpoint PATH [--config CFG] --out DIR
                      (--ratio R | --reference-exposure SECONDS) [--format png|tiff]
                      [--tile-size 512 --tile-overlap 64] [--crop] [--device cpu]
    python enhance.py INPUT ... --onnx onnx/<experiment>/model_qdq.onnx --out DIR --ratio 100
                      [--runtime auto|onnxruntime|openvino]

An ONNX model runs in the runtime `--runtime` names; `auto` (the default) takes the fastest runtime
whose export check passed for that model (export_report.json beside it), and says which.

INPUT is a raw file or a folder (every file in it, sorted). The input is prepared exactly as for
test.py: (raw - black) / (white - black) times the amplification ratio, RGGB-aligned; so on a
test-split file the output is test.py's prediction. The ratio is `--ratio`, or `--reference-exposure`
divided by the file's own exposure time (from its metadata), capped at SID's 300.
Frames are processed in tiles (`--tile-size`, default 512) with frame-wide channel attention, as
test.py does; memory stays bounded by one tile. The networks need height and width in multiples of
32: other frames stop with an error unless `--crop` cuts them from the top-left as test.py does.
Outputs are named after the inputs (x.ARW -> OUT/x.png); inputs from different folders keep their
folders relative to the one they share (a/x.ARW b/x.ARW -> OUT/a/x.png OUT/b/x.png), so no two inputs
write one file. An existing output is never replaced without `--overwrite`.
Bad input (an unreadable file, no ratio, a non-finite ratio, a frame of the wrong size, an output that
exists) prints one line naming the file or flag and exits 2; flags, inputs, ratios and the output folder
are all checked before the first frame is processed, and images already written are kept.
Any 2x2 Bayer pattern (RGGB, BGGR, GRBG, GBRG) is brought to the networks' RGGB phase by dropping the
first row and/or column, as the training data loaders do (docs/datasets.md); X-Trans and Foveon files
are refused. A checkpoint records the cameras of its training data: a file from another camera gets a
one-line warning (a network trained on one sensor's colours gives casts on another's; fine-tune it
on short/long pairs from your camera, data.dataset: pairs).
"""
import argparse
import io
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import harness.runner
from helpers.files import check_writable, write_bytes_atomic
from harness.runner import run_entry_point
from deploy.onnx_network import OnnxNetwork, choose_runtime
from deploy.runtimes import RUNTIMES
from checkpoints.weights import WeightsError
from data.raw_cache import RawInfo, _decode_mosaic, is_image_file, open_raw
from data.raw_metadata import camera_name
from data.sid import EVAL_MULTIPLE, MAXIMUM_RATIO, normalise_mosaic

FORMATS = ("png", "tiff")


def amplification_ratio(path: Path, ratio=None, reference_exposure=None) -> float:
    """`ratio`, or reference exposure / the file's exposure time (capped at SID's maximum)."""
    if ratio is not None:
        if not (math.isfinite(ratio) and ratio > 0):  # inf or nan would write an all-black image
            raise ValueError(f"--ratio must be a finite number above 0, got {ratio}")
        return float(ratio)
    if reference_exposure is None:
        raise ValueError(f"{path}: no amplification ratio; give --ratio R, or --reference-exposure SECONDS "
                         "(the exposure the output should look like) to derive it from the file's exposure time")
    if not (math.isfinite(reference_exposure) and reference_exposure > 0):
        raise ValueError(f"--reference-exposure must be finite positive seconds, got {reference_exposure}")
    with open_raw(path) as raw:
        exposure = float(raw.other.shutter_speed)
    if not (math.isfinite(exposure) and exposure > 0):
        raise ValueError(f"{path}: the file records no exposure time, so --reference-exposure cannot give a "
                         "ratio; give --ratio R")
    return min(reference_exposure / exposure, MAXIMUM_RATIO)


def read_input(path: Path, ratio: float, crop: bool = False, input_kind: str = "mosaic",
               clip_input: bool = False) -> torch.Tensor:
    """The network input (1, 1, H, W) of a raw file, as SIDEvalDataset builds it from the cache."""
    from data.sid import pack_raw
    mosaic, metadata = _decode_mosaic(path)
    if is_image_file(path):  # an 8-bit mosaic image (MCR's TIFFs): read as the MCR loader reads it
        visible = mosaic.shape
    else:
        with open_raw(path) as raw:
            visible = raw.raw_image_visible.shape
    height, width = (size // EVAL_MULTIPLE * EVAL_MULTIPLE for size in mosaic.shape)
    if (height, width) != tuple(visible) and not crop:
        raise ValueError(f"{path}: frame {visible[0]}x{visible[1]} is not RGGB-aligned with height and width "
                         f"multiples of {EVAL_MULTIPLE}; pass --crop to cut it to {height}x{width} from the "
                         "top-left (as test.py does)")
    if height == 0 or width == 0:
        raise ValueError(f"{path}: frame {visible[0]}x{visible[1]} is smaller than {EVAL_MULTIPLE}x{EVAL_MULTIPLE}")
    info = RawInfo(black_level=metadata["black_level"], white_level=metadata["white_level"])
    normalised = normalise_mosaic(mosaic[:height, :width], info, ratio, clip_input)
    network_input = pack_raw(normalised) if input_kind == "packed" else normalised[None]
    return torch.from_numpy(np.ascontiguousarray(network_input))[None]


def camera_warning(path: Path, training_cameras) -> str | None:
    """One line when `path` comes from a camera the network was not trained on (None when it did, or
    when either camera is unknown)."""
    camera = camera_name(path)
    if not training_cameras or camera is None or camera in training_cameras:
        return None
    return (f"warning: {path.name} comes from {camera}, but the network was trained on "
            f"{', '.join(training_cameras)}: expect colour casts; fine-tune it on short/long raw pairs from "
            "your camera (data.dataset: pairs, docs/datasets.md)")


def load_model(args, device):
    if args.onnx:
        if not Path(args.onnx).is_file():
            raise FileNotFoundError(f"--onnx: model not found: {args.onnx}")
        runtime, why = choose_runtime(args.onnx, args.runtime)
        network = OnnxNetwork(args.onnx, args.threads, runtime)
        info = network.runtime
        print(f"running {args.onnx} in {runtime} {str(info['version']).split('-')[0]} ({info['device']}, "
              f"{info['precision']}): {why}")
        return network
    from harness.evaluate_run import load_network
    from harness.config import Config, load_config
    config = load_config(args.config, args.set, check_files=False) if args.config else Config()
    harness.runner.post_mortem = config.pdb_debug
    try:
        model = load_network(config, args.checkpoint, device)
    except WeightsError as error:
        if args.config:
            raise
        # Plain weights (the harness's <experiment>.pth among them) carry no model name or width.
        raise WeightsError(f"{str(error).splitlines()[0]}; plain weights carry no model width: pass --config with "
                           "the run's config (its model.name and model.width)") from None
    model.input_kind = getattr(model, "input_kind", None) or _input_kind(config)
    model.clip_input = config.data.clip_input  # read_input prepares photos as the loader did in training
    return model


def _input_kind(config):
    from models import input_kind
    return input_kind(config.model.name)


def enhance(model, network_input: torch.Tensor, device, tile_size=None, overlap=64) -> np.ndarray:
    """RGB float32 HxWx3 in [0, 1]: what test.py scores for this input."""
    from harness.evaluate import predict
    from models import model_outputs, split_outputs
    # An ONNX graph has no modules to hook: each tile averages over itself in the channel attention.
    passes = 0 if isinstance(model, OnnxNetwork) else None
    with torch.no_grad():
        _, rgb = split_outputs(predict(model, network_input.to(device), tile_size, overlap, passes), model_outputs(model))
    return rgb[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def encode_16bit(rgb: np.ndarray, fmt: str) -> bytes:
    """16-bit RGB PNG (pypng: Pillow writes no 16-bit colour PNG) or TIFF (tifffile)."""
    values = np.round(np.clip(rgb, 0, 1) * 65535.0).astype(np.uint16)
    buffer = io.BytesIO()
    if fmt == "png":
        import png
        height, width, _ = values.shape
        png.Writer(width, height, greyscale=False, bitdepth=16).write(buffer, values.reshape(height, width * 3))
    else:
        import tifffile
        tifffile.imwrite(buffer, values, photometric="rgb")
    return buffer.getvalue()


def input_files(inputs) -> list[Path]:
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")))
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    if not files:
        raise FileNotFoundError(f"no raw files in {', '.join(map(str, inputs))}")
    unique = {}
    for path in files:  # a file named twice (itself and its folder) is enhanced once
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def output_paths(files: list[Path], out_dir: Path, fmt: str) -> list[Path]:
    """One output per input, below `out_dir` at the input's place relative to the folder all inputs share
    (inputs from one folder: straight into `out_dir`), so two inputs never write one file. Two inputs
    that still meet (x.ARW and x.DNG side by side) are refused here, before any work."""
    suffix = "png" if fmt == "png" else "tif"
    parents = [Path(os.path.abspath(path)).parent for path in files]  # where the user put it, links unresolved
    shared = Path(os.path.commonpath(parents)) if len(set(parents)) > 1 else parents[0]
    targets, owners = [], {}
    for path, parent in zip(files, parents):
        target = out_dir / parent.relative_to(shared) / f"{path.stem}.{suffix}"
        if target in owners:
            raise ValueError(f"{owners[target]} and {path} would both be written to {target}; enhance them into "
                             "separate --out folders")
        owners[target] = path
        targets.append(target)
    return targets


def check_outputs(targets: list[Path], out_dir: Path, overwrite: bool) -> None:
    """Refuse before any work: an existing output is never replaced without --overwrite, and an output
    folder that cannot be written is found now, not after the first image."""
    existing = [target for target in targets if target.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]}{more} already exist(s); pass --overwrite to replace, or choose "
                              "another --out")
    for folder in sorted({target.parent for target in targets}):
        check_writable(folder)


def check_arguments(args) -> None:
    """Flags that need no file: checked before the model is loaded or a raw decoded."""
    if args.ratio is not None and args.reference_exposure is not None:
        raise ValueError("give --ratio or --reference-exposure, not both")
    if args.ratio is not None:
        amplification_ratio(Path("-"), args.ratio)
    if args.reference_exposure is not None and not (math.isfinite(args.reference_exposure)
                                                    and args.reference_exposure > 0):
        raise ValueError(f"--reference-exposure must be finite positive seconds, got {args.reference_exposure}")
    if args.tile_size < 0 or args.tile_size % EVAL_MULTIPLE:
        raise ValueError(f"--tile-size must be 0 (whole frame) or a positive multiple of {EVAL_MULTIPLE}, "
                         f"got {args.tile_size}")
    if args.tile_overlap < 0:
        raise ValueError(f"--tile-overlap must be 0 or more pixels, got {args.tile_overlap}")
    if args.threads < 0:
        raise ValueError(f"--threads must be 0 (onnxruntime's default) or more, got {args.threads}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="raw files or folders of them")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="float or quantized checkpoint, or plain weights")
    source.add_argument("--onnx", help="exported model (model_fp32.onnx or model_qdq.onnx)")
    parser.add_argument("--config", help="run config, for plain weights' model name and width (a checkpoint of "
                                         "ours carries its own)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--ratio", type=float, help="amplification ratio (e.g. 100, 250, 300 in SID)")
    parser.add_argument("--reference-exposure", type=float,
                        help="seconds: ratio = this / the file's exposure time")
    parser.add_argument("--format", default="png", choices=FORMATS)
    parser.add_argument("--tile-size", type=int, default=512, help="tile size, multiple of 32; 0 = whole frame")
    parser.add_argument("--tile-overlap", type=int, default=64)
    parser.add_argument("--crop", action="store_true", help="cut frames to multiples of 32 (top-left) instead "
                                                            "of stopping")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="runtime threads for --onnx (0 = its default)")
    parser.add_argument("--runtime", default="auto", choices=("auto",) + tuple(RUNTIMES),
                        help="runtime for --onnx; auto = the fastest that passed the model's export check")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    args = parser.parse_args(argv)
    # Everything that can be checked is checked before the model loads and the first frame is decoded.
    check_arguments(args)
    files = input_files(args.inputs)
    out_dir = Path(args.out)
    targets = output_paths(files, out_dir, args.format)
    check_outputs(targets, out_dir, args.overwrite)
    ratios = [amplification_ratio(path, args.ratio, args.reference_exposure) for path in files]
    device = torch.device(args.device)
    model = load_model(args, device)
    tile_size = args.tile_size or None
    written, warned = [], set()
    try:
        for path, ratio, target in tqdm(list(zip(files, ratios, targets)), desc="enhance", unit="file",
                                        dynamic_ncols=True):
            warning = camera_warning(path, getattr(model, "training_cameras", None))
            if warning and camera_name(path) not in warned:  # once per camera, not once per file
                warned.add(camera_name(path))
                tqdm.write(warning, file=sys.stderr)
            network_input = read_input(path, ratio, args.crop, model.input_kind, getattr(model, "clip_input", False))
            rgb = enhance(model, network_input, device, tile_size, args.tile_overlap)
            write_bytes_atomic(target, encode_16bit(rgb, args.format))
            written.append(target)
    finally:
        # Counted from the files actually written, also when a later file stops the run.
        print(f"{len(written)} of {len(files)} image(s) written to {out_dir}")
    return written


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
