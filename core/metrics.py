"""PSNR and SSIM on RGB clipped to [0, 1], from scikit-image.

Two SSIM variants appear in low-light papers and their numbers are not comparable, so the variant is
a config key (`val.ssim`) and is written next to every reported SSIM:
- `skimage`: scikit-image defaults (7x7 uniform window), as the DBF/DBLE authors used;
- `gaussian`: Wang et al.'s 11x11 Gaussian window (sigma 1.5, population covariance).
"""
import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

SSIM_VARIANTS = {
    "skimage": {},
    "gaussian": {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False},
}


def to_image(tensor_or_array) -> np.ndarray:
    """(3,H,W) tensor or (H,W,3) array -> float64 (H,W,3) clipped to [0, 1]."""
    array = tensor_or_array.detach().cpu().numpy() if hasattr(tensor_or_array, "detach") else np.asarray(tensor_or_array)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def psnr(prediction, target) -> float:
    return float(peak_signal_noise_ratio(to_image(target), to_image(prediction), data_range=1.0))


def ssim(prediction, target, variant: str = "skimage") -> float:
    if variant not in SSIM_VARIANTS:
        raise ValueError(f"val.ssim: unknown SSIM variant {variant!r}; choose one of {sorted(SSIM_VARIANTS)}")
    return float(structural_similarity(to_image(target), to_image(prediction), data_range=1.0,
                                       channel_axis=2, **SSIM_VARIANTS[variant]))
