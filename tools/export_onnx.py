"""Export a trained run to ONNX: the full-precision network and, for a quantized checkpoint, the
fake-quantized network as a standard QuantizeLinear/DequantizeLinear graph, both checked with
onnxruntime and described in export_report.json beside them.

    python tools/export_onnx.py --config configfile/X.yaml [--checkpoint PATH] [--out onnx/<experiment>]
                          [--height 64 --width 64] [--opset N] [--set key=value ...]

Without --checkpoint it takes the run's best checkpoint (then its latest, then load_quant_model /
load_model). --height/--width (multiples of 32) size the example used for tracing and checks; the
graphs take any batch, height and width (multiples of 32). Exit status: 0 exported and checked,
1 a check failed (files and report written), 2 bad input or a quantizer with no QDQ form (the
full-precision model and the report are still written).
"""
from pathlib import Path
import argparse
import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tools/<name>.py` finds the packages

from harness.evaluate_run import default_checkpoint
from harness.runner import load_entry_config, run_entry_point


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run config (see configfile/)")
    parser.add_argument("--checkpoint", help="checkpoint or weights file (default: the run's best)")
    parser.add_argument("--out", help="output folder (default onnx/<experiment>)")
    parser.add_argument("--height", type=int, help="example height, multiple of 32 (default onnx_export.height)")
    parser.add_argument("--width", type=int, help="example width, multiple of 32 (default onnx_export.width)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default onnx_export.opset, else 17, or 21 when "
                                                  "a quantizer is wider than 8 bits)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_entry_config(args.config, args.set, check_files=False)
    checkpoint = args.checkpoint or default_checkpoint(config)
    from harness.export_run import export_run
    report = export_run(config, checkpoint, args.out, args.height, args.width, args.opset)
    if not report["passed"]:
        print("error: an export check failed; see the report", file=sys.stderr)
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
