"""SID's camera, the Sony ILCE-7S / 7S II (a7S): colour, white balance and a calibrated noise model.

The embedded data set imitates this camera so that a network trained on it must learn what it must
learn on SID: the camera's own colour matrix, as-shot white balance, and SID's noise.

Colour. LibRaw's (dcraw's adobe_coeff) matrix for "Sony ILCE-7S" (also used for the ILCE-7SM2),
XYZ -> camera, D65, times 10000: 5838 -1430 -246 / -3497 11477 2297 / -748 1885 5778 (LibRaw
src/tables/colordata.cpp; the same numbers are in Adobe's DNG data for the a7S). The generator
writes it as the DNG's ColorMatrix1 (CalibrationIlluminant1 = D65), so rawpy develops the files
with exactly the matrix it uses for SID's ARW files. Only the D65 matrix is published in LibRaw;
no ColorMatrix2 is written rather than an invented one for illuminant A.

Noise. The physics-based model of ELD (Wei et al., "A Physics-based Noise Formation Model for
Extreme Low-light Raw Denoising", CVPR 2020 / TPAMI 2021):
    raw = K * Poisson(signal / K) + TukeyLambda(lambda) * sigma_TL + row offset N(0, sigma_R^2),
    then quantised to integer DN (quantisation noise, step 1 DN of 14 bits) plus the black level,
with system gain K (DN per electron) proportional to ISO and log(sigma_TL), log(sigma_R) linear in
log(K). The a7S II calibration of that model used here is the one published with PMN (Feng et al.,
"Learnability Enhancement for Low-light Raw Denoising", ACM MM 2022; repository megvii-research/PMN,
`get_camera_noisy_params` 'SonyA7S2_lowISO' / 'SonyA7S2_highISO', and K = 0.0009546 ISO - 0.00193):
the sensor switches conversion gain between ISO 1600 and 2000, hence two sets of coefficients.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.stats import tukeylambda

BLACK_LEVEL = 512
WHITE_LEVEL = 16383

XYZ_TO_CAMERA = np.array(
    [
        [5838, -1430, -246],
        [-3497, 11477, 2297],
        [-748, 1885, 5778],
    ],
    dtype=np.float64,
) / 10000.0

# sRGB(D65) -> XYZ, the matrix LibRaw itself uses to turn XYZ -> camera into camera <-> sRGB.
XYZ_FROM_LINEAR_SRGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)


def camera_from_linear_srgb() -> np.ndarray:
    """LibRaw's white-balanced camera RGB from linear sRGB: XYZ_TO_CAMERA times sRGB -> XYZ, each row
    divided by its sum (LibRaw's normalisation, so that sRGB white is camera white after white
    balance). Its inverse is the camera -> sRGB matrix that postprocess() applies."""
    camera = XYZ_TO_CAMERA @ XYZ_FROM_LINEAR_SRGB
    return camera / camera.sum(axis=1, keepdims=True)


CAMERA_FROM_LINEAR_SRGB = camera_from_linear_srgb()
LINEAR_SRGB_FROM_CAMERA = np.linalg.inv(CAMERA_FROM_LINEAR_SRGB)

# CIE 1931 chromaticities of illuminant A (tungsten, 2856 K) and D65 (daylight): SID has indoor
# and outdoor scenes, so the scene illuminant is drawn between the two.
ILLUMINANT_A_XY = (0.44757, 0.40745)
ILLUMINANT_D65_XY = (0.31271, 0.32902)

# ISO values of SID's Sony list files (train + val + test), each drawn equally often.
SID_ISO_VALUES = (
    50, 64, 80, 100, 160, 200, 250, 320, 400, 500, 640, 800, 1000, 1250, 1600,
    2000, 2500, 4000, 5000, 6400, 8000, 10000, 12800, 16000, 25600,
)
# Apertures of SID's list files; metadata only (the exposure is set by the scene design).
SID_F_NUMBERS = (3.2, 3.5, 4.0, 4.5, 5.0, 5.6, 6.3, 7.1, 8.0, 9.0, 10.0, 11.0, 13.0, 14.0, 16.0, 18.0, 20.0, 22.0)


def white_balance_gains(mix: float) -> tuple[float, float, float]:
    """As-shot multipliers (red, 1, blue) for an illuminant `mix` of the way from A (0) to D65 (1).

    The camera's response to the illuminant's white (XYZ_TO_CAMERA times its XYZ) is the as-shot
    neutral; the multipliers are its inverse, normalised to green = 1 as LibRaw reports them. With
    this matrix: about (1.73, 1, 2.71) under A and (2.77, 1, 1.43) under D65.
    """
    x = ILLUMINANT_A_XY[0] + mix * (ILLUMINANT_D65_XY[0] - ILLUMINANT_A_XY[0])
    y = ILLUMINANT_A_XY[1] + mix * (ILLUMINANT_D65_XY[1] - ILLUMINANT_A_XY[1])
    neutral = XYZ_TO_CAMERA @ np.array([x / y, 1.0, (1.0 - x - y) / y])
    return (float(neutral[1] / neutral[0]), 1.0, float(neutral[1] / neutral[2]))


# --- noise ----------------------------------------------------------------------------------------

# (k, b, jitter) of log(sigma) = k log(K) + b + N(0, jitter^2), PMN's a7S II calibration.
_LOW_ISO = {"tukey_lambda": -0.026, "read": (0.74043, 0.86182, 0.00712), "row": (0.78782, -0.34227, 0.02832)}
_HIGH_ISO = {"tukey_lambda": -0.025, "read": (0.74901, -0.12348, 0.00638), "row": (0.62945, -1.51040, 0.02609)}
HIGH_CONVERSION_GAIN_FROM_ISO = 2000
GAIN_PER_ISO = 0.0009546
GAIN_OFFSET = -0.00193


@dataclasses.dataclass(frozen=True)
class NoiseParameters:
    iso: int
    gain: float  # K, DN per electron
    tukey_lambda: float
    read_scale: float  # sigma_TL, DN: the scale of the Tukey-lambda read noise
    row_sigma: float  # sigma_R, DN: standard deviation of the per-row offset

    @property
    def read_variance(self) -> float:
        return self.read_scale**2 * float(tukeylambda(self.tukey_lambda).var())

    def variance(self, signal_dn: np.ndarray | float) -> np.ndarray | float:
        """Variance of one raw value (DN) at mean signal `signal_dn` above black: shot + read + row
        + quantisation (uniform over one DN)."""
        return self.gain * np.asarray(signal_dn) + self.read_variance + self.row_sigma**2 + 1.0 / 12.0


def system_gain(iso: float) -> float:
    return GAIN_PER_ISO * float(iso) + GAIN_OFFSET


def noise_parameters(iso: int, random_generator: np.random.Generator | None = None) -> NoiseParameters:
    """The model's parameters at `iso`; with a generator, the per-frame jitter of the calibration
    is drawn too (ELD samples it per image), else the calibrated means."""
    coefficients = _LOW_ISO if iso < HIGH_CONVERSION_GAIN_FROM_ISO else _HIGH_ISO
    gain = system_gain(iso)
    if gain <= 0:
        raise ValueError(f"ISO {iso} is below the calibrated range of the a7S noise model (ISO >= 50)")

    def sigma(name: str) -> float:
        slope, intercept, jitter = coefficients[name]
        noise = random_generator.standard_normal() * jitter if random_generator is not None else 0.0
        return float(np.exp(slope * np.log(gain) + intercept + noise))

    return NoiseParameters(int(iso), gain, coefficients["tukey_lambda"], sigma("read"), sigma("row"))


def noisy_raw(signal_dn: np.ndarray, noise: NoiseParameters, random_generator: np.random.Generator) -> np.ndarray:
    """One exposure of a mosaic whose mean is `signal_dn` (float, DN above black, HxW), as the uint16
    values the camera writes: black level added, rounded, clipped to the 14-bit range."""
    electrons = random_generator.poisson(np.maximum(signal_dn, 0) / noise.gain)
    value = electrons.astype(np.float32) * np.float32(noise.gain)
    # Tukey-lambda by inversion of uniform draws (scipy's ppf), scaled as ELD fits it.
    uniform = random_generator.random(signal_dn.shape)
    value += (tukeylambda.ppf(uniform, noise.tukey_lambda) * noise.read_scale).astype(np.float32)
    value += (random_generator.standard_normal((signal_dn.shape[0], 1)) * noise.row_sigma).astype(np.float32)
    value += np.float32(BLACK_LEVEL)
    return np.clip(np.rint(value), 0, WHITE_LEVEL).astype(np.uint16)
