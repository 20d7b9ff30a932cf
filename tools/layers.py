"""List every traced node of the config's network: name, op, output shape, the fake quantizers on its
input and output (with bits), and which config keys accept the name.

    python tools/layers.py --config configfile/X.yaml [--size 64] [--csv layers.csv] [--set key=value ...]

"accepted by" says `special_layer(weight,activation,input)` for the roles an
`extra_quantizer_dict.special_layer` entry of that name can set, `distill_config` for names that
distillation (and `output_layer_list`) can tap, `hessian` for names `tools/hessian_rank.py --layers`
accepts, `hessian(default)` for those it ranks without --layers. The quantizers are those of the
config's quant_scheme and special_layer (without special layers, with a note, when those do not
apply); the network is built with random weights, which changes no name, shape or bit width.
"""
import argparse
import csv
import io
import sys
import warnings
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
if str(REPOSITORY_ROOT) not in sys.path:
    sys.path.insert(0, str(REPOSITORY_ROOT))  # run as `python tools/layers.py` from anywhere

from helpers.files import write_text_atomic  # noqa: E402
from harness.runner import load_entry_config, run_entry_point  # noqa: E402
from harness.setup import build_float_model  # noqa: E402
from models.contract import example_input  # noqa: E402
from quant import prepare_quantized_model  # noqa: E402
from harness.layer_listing import format_layer_rows, layer_rows  # noqa: E402
from quant.special_layers import SpecialLayerError  # noqa: E402

CSV_COLUMNS = ("name", "op", "shape", "input_quantizers", "output_quantizers", "weight_bits", "accepted_by")


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run config (see configfile/)")
    parser.add_argument("--size", type=int, default=64, help="mosaic size of the example input (multiple of 32)")
    parser.add_argument("--csv", help="also write the rows to this CSV file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)
    if args.size <= 0 or args.size % 32:
        raise ValueError(f"--size: {args.size} must be a positive multiple of 32")
    return args


def prepare(config, model):
    """The prepared model with the config's special layers, or without them when they do not apply
    (the listing is how one finds the right names)."""
    special = config.extra_quantizer_dict.special_layer if config.quant else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return prepare_quantized_model(model, config.quant_scheme, special, config.quantize_output), ""
        except (SpecialLayerError, ValueError) as error:
            if not special:
                raise
            note = f"note: special_layer left out of this listing: {error}"
            return prepare_quantized_model(model, config.quant_scheme, None, config.quantize_output), note


def main(argv=None):
    args = parse_arguments(argv)
    config = load_entry_config(args.config, args.set, check_files=False)
    model = build_float_model(config)
    qmodel, note = prepare(config, build_float_model(config))
    rows = layer_rows(model, qmodel, example_input(model.input_kind, args.size))
    print(format_layer_rows(rows))
    if note:
        print(note)
    if args.csv:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([row.name, row.op, row.shape, "; ".join(row.input_quantizers),
                             "; ".join(row.output_quantizers), row.weight_bits, row.accepted_by()])
        write_text_atomic(Path(args.csv), text.getvalue())  # written whole, never half a file
        print(f"layers: {args.csv}")
    return rows


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
