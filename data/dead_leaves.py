"""Procedural training scenes with natural-image statistics: the dead-leaves model, with textures.

Dead leaves (Matheron; Lee, Mumford and Huang, "Occlusion models for natural images", IJCV 2001):
opaque shapes with a power-law size distribution p(r) ~ r^-3 fall on top of each other. The
result is scale invariant, with the 1/f^2 power spectrum and the sharp occlusion edges of natural
photographs, and, unlike a fixed set of photos, there is no end to it: each (seed, scene) gives a
new image. Each leaf carries a colour drawn like natural surfaces (mostly dull, some saturated,
reflectances over two decades) and one of a few textures (1/f noise, gratings) so that the network
also meets fine detail, and a smooth illumination field darkens parts of the frame as lights do.

Written here rather than taken from a library: no maintained package renders dead-leaves images;
the painting loop is plain numpy on each leaf's bounding box.
"""

from __future__ import annotations

import numpy as np

MINIMUM_RADIUS = 3.0  # pixels
# Leaves are painted front to back until the frame is covered; the cap bounds the time spent on
# the last uncovered pixels, which then take the colour of a background leaf.
LEAVES_PER_PIXEL = 1 / 25
TEXTURE_COUNT = 4


def _pink_noise(height: int, width: int, exponent: float, random_generator: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a 1/f^exponent amplitude spectrum, zero mean, unit standard deviation."""
    frequency_y = np.fft.fftfreq(height)[:, None]
    frequency_x = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(frequency_y**2 + frequency_x**2)
    radius[0, 0] = 1.0
    spectrum = random_generator.standard_normal((height, width // 2 + 1)) + 1j * random_generator.standard_normal(
        (height, width // 2 + 1)
    )
    spectrum /= radius**exponent
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(height, width))
    return (field / (field.std() + 1e-12)).astype(np.float32)


def _grating(height: int, width: int, random_generator: np.random.Generator) -> np.ndarray:
    """A sinusoidal or square grating of random period (3-40 px) and orientation, in [-1, 1]."""
    angle = random_generator.uniform(0, np.pi)
    period = np.exp(random_generator.uniform(np.log(3.0), np.log(40.0)))
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    wave = np.sin(2 * np.pi * (columns * np.cos(angle) + rows * np.sin(angle)) / period)
    return (np.sign(wave) if random_generator.random() < 0.3 else wave).astype(np.float32)


def _leaf_colours(count: int, random_generator: np.random.Generator) -> np.ndarray:
    """Linear RGB colours: hue uniform, saturation mostly low (Beta(1.2, 3)), encoded value
    uniform, then linearised with a display gamma, so reflectances span about 0.01-1."""
    from skimage.color import hsv2rgb

    hsv = np.stack(
        [
            random_generator.random(count),
            random_generator.beta(1.2, 3.0, count),
            random_generator.uniform(0.08, 1.0, count),
        ],
        axis=-1,
    )
    encoded = hsv2rgb(hsv[:, None, :])[:, 0, :]
    return (encoded**2.2).astype(np.float32)


def _illumination(height: int, width: int, random_generator: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative light field, 1 at its brightest, down to about e^-2 in shadow."""
    field = _pink_noise(height, width, 3.0, random_generator)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = random_generator.uniform(0, 2 * np.pi)
    ramp = (columns / width - 0.5) * np.cos(angle) + (rows / height - 0.5) * np.sin(angle)
    log_light = random_generator.uniform(0.2, 0.7) * field + random_generator.uniform(0.0, 1.5) * ramp
    return np.exp(log_light - log_light.max()).astype(np.float32)


# Larger frames (the 4256x2848 benchmark sets) are rendered at this many pixels and enlarged: the
# painting loop grows with the area, and at that size only throughput matters.
MAXIMUM_RENDERED_PIXELS = 1_000_000


def dead_leaves(height: int, width: int, random_generator: np.random.Generator) -> np.ndarray:
    """A textured dead-leaves image in linear light, float32 HxWx3 in [0, 1]."""
    if height * width > MAXIMUM_RENDERED_PIXELS:
        from PIL import Image

        shrink = np.sqrt(height * width / MAXIMUM_RENDERED_PIXELS)
        small = _dead_leaves(max(1, int(height / shrink)), max(1, int(width / shrink)), random_generator)
        return np.stack(
            [np.asarray(Image.fromarray(small[..., channel]).resize((width, height), Image.BILINEAR)) for channel in range(3)],
            axis=-1,
        )
    return _dead_leaves(height, width, random_generator)


def _dead_leaves(height: int, width: int, random_generator: np.random.Generator) -> np.ndarray:
    maximum_radius = 0.35 * min(height, width)
    textures = [
        _pink_noise(height, width, random_generator.uniform(0.8, 1.5), random_generator),
        _pink_noise(height, width, random_generator.uniform(0.0, 0.6), random_generator),
        _grating(height, width, random_generator),
        _grating(height, width, random_generator),
    ]
    leaf_budget = max(64, int(height * width * LEAVES_PER_PIXEL))
    colours = _leaf_colours(leaf_budget + 1, random_generator)
    # Inverse CDF of p(r) ~ r^-3 on [MINIMUM_RADIUS, maximum_radius].
    uniform = random_generator.random(leaf_budget)
    radii = (MINIMUM_RADIUS**-2 - uniform * (MINIMUM_RADIUS**-2 - maximum_radius**-2)) ** -0.5

    image = np.empty((height, width, 3), dtype=np.float32)
    covered = np.zeros((height, width), dtype=bool)
    uncovered = height * width
    for leaf in range(leaf_budget):
        radius = radii[leaf]
        center_y, center_x = random_generator.uniform(-radius, height + radius), random_generator.uniform(-radius, width + radius)
        aspect = np.exp(random_generator.uniform(-0.7, 0.7))
        angle = random_generator.uniform(0, np.pi)
        shape = random_generator.random()  # < 0.75 ellipse, else rectangle
        texture = int(random_generator.integers(0, TEXTURE_COUNT + 2))  # the last two: plain colour
        amplitude = random_generator.uniform(0.1, 0.6)
        extent = radius * max(aspect, 1 / aspect)
        top, bottom = max(0, int(center_y - extent)), min(height, int(center_y + extent) + 1)
        left, right = max(0, int(center_x - extent)), min(width, int(center_x + extent) + 1)
        if top >= bottom or left >= right:
            continue
        rows = np.arange(top, bottom, dtype=np.float32)[:, None] - np.float32(center_y)
        columns = np.arange(left, right, dtype=np.float32)[None, :] - np.float32(center_x)
        along = (columns * np.cos(angle) + rows * np.sin(angle)) / (radius * aspect)
        across = (-columns * np.sin(angle) + rows * np.cos(angle)) * aspect / radius
        inside = (along**2 + across**2 <= 1) if shape < 0.75 else ((np.abs(along) <= 0.8) & (np.abs(across) <= 0.8))
        inside &= ~covered[top:bottom, left:right]
        if not inside.any():
            continue
        colour = colours[leaf]
        window = image[top:bottom, left:right]
        if texture < TEXTURE_COUNT:
            modulation = np.clip(1 + amplitude * textures[texture][top:bottom, left:right][inside], 0.1, 2.0)
            window[inside] = colour[None, :] * modulation[:, None]
        else:
            window[inside] = colour
        covered[top:bottom, left:right] |= inside
        uncovered -= int(inside.sum())
        if uncovered == 0:
            break
    if uncovered:
        image[~covered] = colours[-1]
    image *= _illumination(height, width, random_generator)[..., None]
    return np.clip(image, 0.0, 1.0, out=image)
