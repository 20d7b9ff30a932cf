"""Rewrite a checkpoint that the safe loader refuses into one it accepts.

    python tools/convert_checkpoint.py OLD.pth --trust [--out NEW.pth]

Checkpoints written by lowlight-qat before safe loading stored NumPy's RNG state as a NumPy array,
which `torch.load(weights_only=True)` will not read. This command reads OLD.pth with the UNSAFE
unpickler, which runs any code the file contains: pass --trust only for a file you made yourself or
got from a source you trust. It writes the same content with safe types only (tensors, numbers,
strings, lists, dicts), to OLD.pth itself unless --out is given, and checks that it loads safely.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tools/<name>.py` finds the packages

from harness.config import ConfigError
from harness.runner import run_entry_point
from checkpoints.convert import convert_trusted_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the checkpoint to convert")
    parser.add_argument("--trust", action="store_true",
                        help="required: read the file with the unsafe unpickler, which runs any code it holds")
    parser.add_argument("--out", help="where to write the converted file (default: over the original)")
    args = parser.parse_args(argv)
    source = Path(args.checkpoint)
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint not found: {source}")
    if not args.trust:
        raise ConfigError(f"{source}: converting reads the file with the unsafe unpickler, which runs any code "
                          "it holds; pass --trust only for a file from a source you trust")
    target = Path(args.out) if args.out else source
    convert_trusted_checkpoint(source, target)
    print(f"converted {source} -> {target}; it now loads with weights_only=True")


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
