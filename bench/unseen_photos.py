"""Does the demo's teacher teach? The trained network against the naive baseline, per exposure
ratio, on SID-format pairs made from natural photos that the generator never draws from.

Photos: scikit-learn's two sample images (china, flower) and matplotlib's grace_hopper. Each
gives `--crops` crops of the embedded set's frame size, rendered exactly like the embedded set
(Sony a7S colour, as-shot white balance, ELD noise at an ISO drawn from SID's) with a 10 s ground
truth and 0.1 / 0.04 / 0.033 s inputs, so every crop is scored at x100, x250 and x300. Scoring is
the project's own: the checkpoint evaluated on the whole frame, the naive baseline being the short
exposure amplified by the ratio and developed by rawpy (harness/evaluate_run.py).

scikit-learn is not a project requirement; install it for this check only:
    pip install "scikit-learn>=1.3,<2"
    python bench/unseen_photos.py [--checkpoint onnx/demo_fp.pth] [--config configfile/demo_fp.yaml]

Writes results/unseen_photos/per_image.csv and summary.csv and prints the per-ratio table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.evaluate_run import baseline_rows, load_network  # noqa: E402
from harness.config import load_config  # noqa: E402
from harness.evaluate import evaluate  # noqa: E402
from helpers.files import write_csv_atomic  # noqa: E402
from harness.records import format_table  # noqa: E402
from harness.setup import build_eval_dataset, resolve_device  # noqa: E402
from data.synthetic import linear_crop, render_linear_scene, write_scene  # noqa: E402
from models import input_kind  # noqa: E402

DESIGN = (10.0, (0.1, 0.04, 0.033))


def unseen_photos() -> dict[str, np.ndarray]:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise SystemExit('error: this check needs scikit-learn: pip install "scikit-learn>=1.3,<2"') from None
    from matplotlib import cbook
    from PIL import Image

    sample = load_sample_images()
    photos = {Path(name).stem: np.asarray(image, dtype=np.uint8) for name, image in zip(sample.filenames, sample.images)}
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        photos["grace_hopper"] = np.asarray(Image.open(handle).convert("RGB"), dtype=np.uint8)
    return photos


def write_unseen_set(root: Path, height: int, width: int, crops: int, seed: int) -> list[str]:
    lines, scene_id = [], 10000
    for photo_index, (name, photo) in enumerate(sorted(unseen_photos().items())):
        for crop in range(crops):
            scene_id += 1
            random_generator = np.random.default_rng([seed, 4242, photo_index, crop])
            linear = linear_crop(photo, height, width, random_generator)
            scene = render_linear_scene(linear, scene_id, name, DESIGN, random_generator)
            lines += write_scene(root, seed, scene, bursts=1)[1]
    (root / "Sony_test_list.txt").write_text("".join(line + "\n" for line in sorted(lines)))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configfile/demo_fp.yaml", help="run config (model, SSIM variant, frame size)")
    parser.add_argument("--checkpoint", default="onnx/demo_fp.pth")
    parser.add_argument("--crops", type=int, default=2, help="crops per photo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, help="where to write the pairs (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("results/unseen_photos"))
    arguments = parser.parse_args(argv)
    config = load_config(arguments.config)
    synthetic = config.data.synthetic
    height, width = (synthetic.height, synthetic.width) if synthetic else (256, 384)
    with tempfile.TemporaryDirectory() as temporary:
        root = (arguments.root or Path(temporary)).absolute()
        write_unseen_set(root, height, width, arguments.crops, arguments.seed)
        config = load_config(arguments.config, [f"data.root={root}", "data.synthetic=null", "data.test_protocol=all",
                                                "data.test_list=Sony_test_list.txt", f"data.cache_dir={root / '.cache'}",
                                                "data.max_test_pairs=null"])
        device = resolve_device(config)
        model = load_network(config, arguments.checkpoint, device)
        dataset = build_eval_dataset(config, "test", input_kind(config.model.name))
        _, rows = evaluate(model, dataset, device, config.val.ssim, config.val.tile_size, config.val.tile_overlap,
                           description="unseen photos")
        for row, extra in zip(rows, baseline_rows(dataset, config.val.ssim)):
            row.update(extra)
    summary = []
    for ratio in sorted({row["ratio"] for row in rows}) + [None]:
        chosen = [row for row in rows if ratio is None or row["ratio"] == ratio]
        summary.append({"ratio": "all" if ratio is None else f"x{ratio:g}", "pairs": len(chosen),
                        **{key: float(np.mean([row[key] for row in chosen]))
                           for key in ("psnr", "baseline_psnr", "ssim", "baseline_ssim")}})
    arguments.out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(arguments.out / "per_image.csv", rows)
    write_csv_atomic(arguments.out / "summary.csv", summary)
    print(f"\n{arguments.checkpoint} on {len(rows)} pairs from photos the generator never uses "
          f"(SSIM variant {config.val.ssim}):")
    print(format_table(summary, ["ratio", "pairs", "psnr", "baseline_psnr", "ssim", "baseline_ssim"]))
    beaten = all(row["psnr"] > row["baseline_psnr"] and row["ssim"] > row["baseline_ssim"] for row in summary)
    print(f"teacher beats the naive baseline at every ratio in PSNR and SSIM: {'yes' if beaten else 'NO'}")
    print(f"results: {arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
