"""PSNR and SSIM from scikit-image, on RGB (or mono) images clipped to [0, 1].

Two choices change the numbers and are therefore config keys, written next to every reported value:
- the SSIM variant (`val.ssim`):
  `skimage`: scikit-image defaults (7x7 uniform window), as the DBF/DBLE authors used;
  `gaussian`: Wang et al.'s 11x11 Gaussian window (sigma 1.5, population covariance);
- the metric precision (`val.metric_precision`):
  `float`: the clipped float images as they are;
  `uint8`: the DBF/DBLE authors' scoring (test_on_SID.py): prediction and ground truth clipped to
  [0, 1], then truncated with `uint8(x * 255)`, then skimage PSNR/SSIM on the 8-bit images (data
  range 255). Truncation darkens both images by half a level on average and quantizes them, so it
  gives a few hundredths of a dB less than `float` on realistic images; use it to compare with the paper.
"""
import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

SSIM_VARIANTS = {
    "skimage": {},
    "gaussian": {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False},
}
METRIC_PRECISIONS = ("float", "uint8")


def to_image(tensor_or_array) -> np.ndarray:
    """(3,H,W) tensor or (H,W,3) array -> float64 (H,W,3) clipped to [0, 1]; (1,H,W) or (H,W) -> (H,W)."""
    array = tensor_or_array.detach().cpu().numpy() if hasattr(tensor_or_array, "detach") else np.asarray(tensor_or_array)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def scored_image(tensor_or_array, precision: str = "float") -> np.ndarray:
    """The image as the metric sees it: clipped float64, or the authors' truncated uint8."""
    if precision not in METRIC_PRECISIONS:
        raise ValueError(f"val.metric_precision: unknown metric precision {precision!r}; "
                         f"choose one of {', '.join(METRIC_PRECISIONS)}")
    image = to_image(tensor_or_array)
    return (image * 255).astype(np.uint8) if precision == "uint8" else image


def psnr(prediction, target, precision: str = "float") -> float:
    target, prediction = scored_image(target, precision), scored_image(prediction, precision)
    return float(peak_signal_noise_ratio(target, prediction, data_range=255 if precision == "uint8" else 1.0))


def ssim(prediction, target, variant: str = "skimage", precision: str = "float") -> float:
    if variant not in SSIM_VARIANTS:
        raise ValueError(f"val.ssim: unknown SSIM variant {variant!r}; choose one of {sorted(SSIM_VARIANTS)}")
    target, prediction = scored_image(target, precision), scored_image(prediction, precision)
    return float(structural_similarity(target, prediction, data_range=255 if precision == "uint8" else 1.0,
                                       channel_axis=2 if target.ndim == 3 else None, **SSIM_VARIANTS[variant]))
