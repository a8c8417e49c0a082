"""Common image corruptions at five severities, for ``resnet-parity levels``: how hard an image
can the model take?

The corruptions and their per-severity parameter tables are those of ImageNet-C: D. Hendrycks and
T. Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations",
ICLR 2019 (arXiv:1903.12261). Their reference code is ``ImageNet-C/create_c/make_imagenet_c.py``
in github.com/hendrycks/robustness (``make_cifar_c.py`` beside it holds CIFAR-10-C's tables for
32x32 images); github.com/bethgelab/imagecorruptions re-packages it. The code here is written in
numpy (with scipy.ndimage for the blurs and Pillow for pixelate and JPEG) from those definitions;
each function's docstring gives the formula and the table it follows. ``dark`` is the suite's
own extension, not an ImageNet-C corruption (its docstring says what it is modelled on).

Conventions, the same for every corruption:

* **Range and dtype.** The uint8 image is read as float64 ``x = image / 255.``, the corruption is
  applied, and the result is written back as ``np.clip(y, 0, 1) * 255`` converted with
  **truncation** (``astype(np.uint8)``), exactly as ImageNet-C's ``np.uint8(...)`` before it saves
  an image. (ImageNet-C then stored every image as a JPEG of quality 85; that last step is not
  reproduced.) Pixelate and JPEG are done by Pillow on the uint8 image, as in the reference.
* **Randomness.** Random corruptions draw from ``np.random.default_rng(seed)`` alone, so the same
  ``(image, name, severity, seed)`` gives the same bits whatever numpy's global state. The
  reference draws from numpy's global legacy generator: the distributions are the same, the
  samples are not.
* **Size.** ImageNet-C's tables are set for 224x224 images. Resolution-independent parameters
  (noise levels, contrast, brightness, dark, JPEG quality, and pixelate, whose parameter is a
  fraction of the side) are used as published, at every size. Spatial parameters in pixels (the
  blur radii and sigmas) are scaled by ``min(H, W) / 224``, so a blur covers the same fraction of
  any image (at 32x32 the lowest severities are then sub-pixel and close to the identity). Fog's
  plasma fractal is generated at the next power of two >= ``max(H, W)`` and cropped to the image
  (top-left), as ImageNet-C does with 256 for 224 and CIFAR-10-C with 32 for 32. At 224x224 every
  corruption is the published one.
* **Grey images** (H, W) get what ImageNet-C does to each channel, applied to the single channel
  (the HSV value of a grey pixel is its grey level, so brightness and dark add to it); the output
  stays (H, W).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)
_Rng = Optional[np.random.Generator]   # the seeded generator; None for the corruptions that draw none
REFERENCE_SIZE = 224   # the side ImageNet-C's spatial parameters are set for


@dataclass(frozen=True)
class Corruption:
    """What one corruption is; :func:`corrupt` applies it."""

    name: str
    description: str      # one line
    source: str           # "ImageNet-C", "ImageNet-C (extra)" or the suite's own
    monotone: bool        # its definition makes it stronger with each severity
    random: bool          # it draws random numbers (from the seed)


# -- conversions ----------------------------------------------------------------------------------

def _to_float(image: np.ndarray) -> np.ndarray:
    return image / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """ImageNet-C's last step: clip to [0, 1], scale to [0, 255], truncate to uint8."""
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def _scale(image: np.ndarray) -> float:
    """The factor that carries a length in pixels at 224x224 to this image: min(H, W) / 224."""
    return min(image.shape[0], image.shape[1]) / REFERENCE_SIZE


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 1] to HSV in [0, 1], as scikit-image's ``rgb2hsv`` (which ImageNet-C
    uses): V = max, S = (max - min) / max (0 where max = min), H in sixths of the circle."""
    v = rgb.max(-1)
    delta = np.ptp(rgb, axis=-1)
    h = np.zeros_like(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = delta / v
        s[delta == 0] = 0.0
        for k, (a, b) in enumerate(((1, 2), (2, 0), (0, 1))):   # red, green, blue is the max
            idx = rgb[..., k] == v
            h[idx] = 2.0 * k + (rgb[idx, a] - rgb[idx, b]) / delta[idx]
    h = (h / 6.0) % 1.0
    h[delta == 0] = 0.0
    return np.stack([h, s, v], axis=-1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_rgb_to_hsv`, as scikit-image's ``hsv2rgb``."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    sector = hi.astype(np.int64) % 6
    choices = np.stack([np.stack(c, axis=-1) for c in
                        ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return np.take_along_axis(choices, sector[None, ..., None], axis=0)[0]


def _shift_value(image: np.ndarray, c: float) -> np.ndarray:
    """HSV value V -> clip(V + c, 0, 1), hue and saturation kept (for a grey image: x + c)."""
    x = _to_float(image)
    if x.ndim == 2:
        return _to_uint8(x + c)
    hsv = _rgb_to_hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return _to_uint8(_hsv_to_rgb(hsv))


# -- noise ----------------------------------------------------------------------------------------

_GAUSSIAN_NOISE = (.08, .12, .18, .26, .38)
_SHOT_NOISE = (60, 25, 12, 5, 3)
_IMPULSE_NOISE = (.03, .06, .09, .17, .27)
_SPECKLE_NOISE = (.15, .2, .35, .45, .6)


def _gaussian_noise(image: np.ndarray, severity: int, rng: _Rng) -> np.ndarray:
    """``x + N(0, c^2)`` per value, clipped; c = .08, .12, .18, .26, .38 (ImageNet-C)."""
    c = _GAUSSIAN_NOISE[severity - 1]
    x = _to_float(image)
    return _to_uint8(x + rng.normal(size=x.shape, scale=c))


def _shot_noise(image: np.ndarray, severity: int, rng: _Rng) -> np.ndarray:
    """Poisson (photon) noise ``Poisson(x * c) / c``, clipped; c = 60, 25, 12, 5, 3 photons at
    full scale (ImageNet-C)."""
    c = _SHOT_NOISE[severity - 1]
    x = _to_float(image)
    return _to_uint8(rng.poisson(x * c) / c)


def _impulse_noise(image: np.ndarray, severity: int, rng: _Rng) -> np.ndarray:
    """Salt and pepper: each value (each channel independently) is replaced with probability c by
    1 or 0, salt and pepper equally likely; c = .03, .06, .09, .17, .27 (ImageNet-C, through
    scikit-image's ``random_noise(x, mode='s&p', amount=c)``, whose Bernoulli draws
    ``rng.random(shape) <= p`` for "flipped", then for "salted", are the ones made here)."""
    c = _IMPULSE_NOISE[severity - 1]
    x = _to_float(image)
    flipped = rng.random(x.shape) <= c
    salted = rng.random(x.shape) <= 0.5
    x[flipped & salted] = 1.0
    x[flipped & ~salted] = 0.0
    return _to_uint8(x)


def _speckle_noise(image: np.ndarray, severity: int, rng: _Rng) -> np.ndarray:
    """Multiplicative noise ``x + x * N(0, c^2)``, clipped; c = .15, .2, .35, .45, .6
    (ImageNet-C's extra set)."""
    c = _SPECKLE_NOISE[severity - 1]
    x = _to_float(image)
    return _to_uint8(x + x * rng.normal(size=x.shape, scale=c))


# -- blur -----------------------------------------------------------------------------------------

_DEFOCUS_BLUR = ((3, .1), (4, .5), (6, .5), (8, .5), (10, .5))
_GAUSSIAN_BLUR = (1, 2, 3, 4, 6)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C's ``disk``: the lattice points with ``X^2 + Y^2 <= radius^2`` on a grid of
    half-width 8 (or ceil(radius) beyond 8), normalised to sum 1, then anti-aliased by a separable
    Gaussian of sigma ``alias_blur`` and 3 taps (5 beyond radius 8) with mirror (reflect-101)
    borders, as OpenCV's ``GaussianBlur`` does; float32, as in the reference. Trimmed of its
    all-zero border rows and columns, which contribute nothing."""
    from scipy import ndimage
    half, taps = (8, 3) if radius <= 8 else (int(np.ceil(radius)), 5)
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    kernel = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float32)
    kernel /= np.sum(kernel)
    g = np.exp(-(np.arange(taps) - (taps - 1) / 2) ** 2 / (2 * alias_blur ** 2))
    g = (g / g.sum()).astype(np.float32)
    for axis in (0, 1):
        kernel = ndimage.correlate1d(kernel, g, axis=axis, mode="mirror")
    rows, cols = np.flatnonzero(kernel.any(axis=1)), np.flatnonzero(kernel.any(axis=0))
    return kernel[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float64)


def _defocus_blur(image: np.ndarray, severity: int, rng: _Rng) -> np.ndarray:
    """Each channel correlated with :func:`_disk` (mirror borders, OpenCV's ``filter2D``
    default), clipped. (radius px at 224, alias-blur sigma) = (3, .1), (4, .5), (6, .5), (8, .5),
    (10, .5) (ImageNet-C). The radius is scaled by min(H, W) / 224; the alias blur, which smooths
    the lattice disk's edge pixel by pixel, is not. (CIFAR-10-C's own 32x32 table is (.3, .4),
    (.4, .5), (.5, .6), (1, .2), (1.5, .1); scaled, ImageNet-C's gives radii .43 to 1.43 there.)"""
    from scipy import ndimage
    radius, alias_blur = _DEFOCUS_BLUR[severity - 1]
    kernel = _disk(radius * _scale(image), alias_blur)
    x = _to_float(image)
    if x.ndim == 3:
        kernel = kernel[..., None]
    return _to_uint8(ndimage.correlate(x, kernel, mode="mirror"))


def _gaussian_blur(image: np.ndarray, severity: int, rng: _Rng) -> np.ndarray:
    """A Gaussian filter over rows and columns (not channels), sigma c px at 224 = 1, 2, 3, 4, 6,
    truncated at 4 sigma, nearest-edge borders (scikit-image's ``filters.gaussian`` defaults, as
    ImageNet-C's extra set calls it), clipped. sigma is scaled by min(H, W) / 224.
    (CIFAR-10-C's 32x32 table: .4, .6, .7, .8, 1; scaled, ImageNet-C's gives .14 to .86.)"""
    from scipy import ndimage
    sigma = _GAUSSIAN_BLUR[severity - 1] * _scale(image)
    x = _to_float(image)
    sigmas = (sigma, sigma) + (0.0,) * (x.ndim - 2)
    return _to_uint8(ndimage.gaussian_filter(x, sigmas, mode="nearest", truncate=4.0))


# -- weather --------------------------------------------------------------------------------------

_FOG = ((1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4))
_BRIGHTNESS = (.1, .2, .3, .4, .5)


def plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """ImageNet-C's ``plasma_fractal``: a (mapsize, mapsize) diamond-square height map on a torus,
    normalised to [0, 1]. Each midpoint is the mean of its four neighbours plus
    ``wibble * U(-wibble, wibble)``; wibble starts at 100 and is divided by ``wibbledecay`` at each
    halving of the step (the draws come in the reference's order: squares, then the two diamond
    sets, per level). ``mapsize`` must be a power of two, at least 2."""
    if mapsize < 2 or mapsize & (mapsize - 1):
        raise ValueError(f"plasma_fractal: mapsize {mapsize} is not a power of two >= 2")
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize, wibble = mapsize, 100.0

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        # squares: each square's centre from its four corners
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squares = corners + np.roll(corners, shift=-1, axis=0)
        squares += np.roll(squares, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(squares)
        # diamonds: each edge midpoint from the two corners and the two centres beside it
        centres = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        across = (centres + np.roll(centres, 1, axis=0)) + (corners + np.roll(corners, -1, axis=1))
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(across)
        down = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=0))
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(down)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def _fog(image: np.ndarray, severity: int, rng: _Rng) -> np.ndarray:
    """``x += c0 * plasma``, then ``x * m / (m + c0)`` with m = max(x) of the clean image, clipped;
    (c0, wibbledecay) = (1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4) (ImageNet-C). The plasma
    (:func:`plasma_fractal`, the same for every channel) is generated at the next power of two
    >= max(H, W) (256 for 224, as in the reference) and its top-left (H, W) is used. A pixel
    where the plasma is 1 on an image of constant m stays m. (An all-black image stays black:
    m = 0, as in the reference.) Stronger with severity by its table: what is left of the image,
    m / (m + c0), never grows (severities 3 and 4 share c0 = 2.5 and differ in the fractal's
    texture, a lower decay keeping more fine detail); the mean deviation from the clean image is
    not monotone (severity 4 often deviates less than 3)."""
    c0, decay = _FOG[severity - 1]
    h, w = image.shape[:2]
    mapsize = max(2, 1 << (max(h, w) - 1).bit_length())
    x = _to_float(image)
    max_val = x.max()
    plasma = plasma_fractal(mapsize, decay, rng)[:h, :w]
    x += c0 * (plasma if x.ndim == 2 else plasma[..., None])
    return _to_uint8(x * max_val / (max_val + c0))


def _brightness(image: np.ndarray, severity: int, rng: _Rng) -> np.ndarray:
    """In HSV, ``V = clip(V + c, 0, 1)``, hue and saturation kept; c = .1, .2, .3, .4, .5
    (ImageNet-C). For fixed H and S, RGB is proportional to V, so every channel is multiplied by
    V' / V (a black pixel becomes grey V'); for a grey image it is ``x + c``."""
    return _shift_value(image, _BRIGHTNESS[severity - 1])


# -- digital --------------------------------------------------------------------------------------

_CONTRAST = (.4, .3, .2, .1, .05)
_PIXELATE = (.6, .5, .4, .3, .25)
_JPEG = (25, 18, 15, 10, 7)
_DARK = (.1, .2, .3, .4, .5)


def _contrast(image: np.ndarray, severity: int, rng: _Rng) -> np.ndarray:
    """``(x - mean) * c + mean`` with the mean of each channel over the image, clipped;
    c = .4, .3, .2, .1, .05 (ImageNet-C)."""
    c = _CONTRAST[severity - 1]
    x = _to_float(image)
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return _to_uint8((x - means) * c + means)


def _pil(image: np.ndarray):
    from PIL import Image
    return Image.fromarray(np.ascontiguousarray(image), mode="L" if image.ndim == 2 else "RGB")


def _pixelate(image: np.ndarray, severity: int, rng: _Rng) -> np.ndarray:
    """Pillow's box filter down to ``(int(W * c), int(H * c))`` (at least 1) and box back up to
    (W, H); c = .6, .5, .4, .3, .25 (ImageNet-C, which writes 224 * c). c is a fraction of the
    side, so it holds at every size (CIFAR-10-C uses .95 to .65 for 32x32)."""
    from PIL import Image
    c = _PIXELATE[severity - 1]
    h, w = image.shape[:2]
    small = _pil(image).resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BOX), dtype=np.uint8).copy()


def _jpeg_compression(image: np.ndarray, severity: int, rng: _Rng) -> np.ndarray:
    """Saved by Pillow as a JPEG of quality c = 25, 18, 15, 10, 7 (Pillow's other defaults, 4:2:0
    chroma subsampling for RGB) and decoded (ImageNet-C). A grey image is saved as a grey JPEG."""
    from PIL import Image
    buffer = io.BytesIO()
    _pil(image).save(buffer, format="JPEG", quality=_JPEG[severity - 1])
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded, dtype=np.uint8).copy()


def _dark(image: np.ndarray, severity: int, rng: _Rng) -> np.ndarray:
    """**Not an ImageNet-C corruption**: the suite's darkness ("a car at night"), defined as the
    inverse of ImageNet-C's brightness. In HSV, ``V = clip(V - c, 0, 1)``, hue and saturation
    kept; c = .1, .2, .3, .4, .5 (brightness's table). Every channel is multiplied by
    max(V - c, 0) / V, so values below c go black; for a grey image it is ``x - c``."""
    return _shift_value(image, -_DARK[severity - 1])


# -- the table ------------------------------------------------------------------------------------

_IMAGENET_C, _EXTRA = "ImageNet-C", "ImageNet-C (extra)"
_Function = Callable[[np.ndarray, int, _Rng], np.ndarray]
_TABLE: tuple[tuple[Corruption, _Function], ...] = (
    (Corruption("gaussian_noise", "gaussian_noise: additive Gaussian noise, sigma .08 to .38 of "
                "full scale (ImageNet-C)", _IMAGENET_C, True, True), _gaussian_noise),
    (Corruption("shot_noise", "shot_noise: Poisson photon noise, 60 down to 3 photons at full scale "
                "(ImageNet-C)", _IMAGENET_C, True, True), _shot_noise),
    (Corruption("impulse_noise", "impulse_noise: salt and pepper on 3% to 27% of the values "
                "(ImageNet-C)", _IMAGENET_C, True, True), _impulse_noise),
    (Corruption("defocus_blur", "defocus_blur: a disk kernel, radius 3 to 10 px at 224x224 "
                "(ImageNet-C)", _IMAGENET_C, True, False), _defocus_blur),
    (Corruption("fog", "fog: a plasma-fractal haze (ImageNet-C)", _IMAGENET_C, True, True), _fog),
    (Corruption("brightness", "brightness: HSV value raised by .1 to .5 (ImageNet-C)",
                _IMAGENET_C, True, False), _brightness),
    (Corruption("contrast", "contrast: deviations from the channel means scaled by .4 to .05 "
                "(ImageNet-C)", _IMAGENET_C, True, False), _contrast),
    (Corruption("pixelate", "pixelate: box-resized to 60% to 25% of the side and back "
                "(ImageNet-C)", _IMAGENET_C, True, False), _pixelate),
    (Corruption("jpeg_compression", "jpeg_compression: JPEG at quality 25 down to 7 (ImageNet-C)",
                _IMAGENET_C, True, False), _jpeg_compression),
    (Corruption("speckle_noise", "speckle_noise: multiplicative Gaussian noise, sigma .15 to .6 "
                "(ImageNet-C extra)", _EXTRA, True, True), _speckle_noise),
    (Corruption("gaussian_blur", "gaussian_blur: a Gaussian kernel, sigma 1 to 6 px at 224x224 "
                "(ImageNet-C extra)", _EXTRA, True, False), _gaussian_blur),
    (Corruption("dark", "dark: HSV value lowered by .1 to .5, night-like (the suite's, not "
                "ImageNet-C)", "suite (inverse of ImageNet-C brightness)", True, False), _dark),
)
CORRUPTIONS: dict[str, Corruption] = {c.name: c for c, _ in _TABLE}
_FUNCTIONS = {c.name: f for c, f in _TABLE}


# -- the entry point ------------------------------------------------------------------------------

def _check_image(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image: a numpy array expected, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image: dtype {image.dtype}; corruptions take uint8 images in [0, 255]")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image: shape {image.shape}; expected (H, W) grey or (H, W, 3) RGB")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image: shape {image.shape} is empty")
    return image


def corrupt(image: np.ndarray, name: str, severity: int, seed: int | Sequence[int] = 0
            ) -> np.ndarray:
    """``image`` (uint8, (H, W) or (H, W, 3)) under corruption ``name`` at ``severity``: 0 is the
    identity (a copy), 1..5 the published tables. Returns a new uint8 array of the same shape;
    the input is never modified. Random corruptions draw from ``np.random.default_rng(seed)``
    (an int, or a sequence such as ``(seed, image_index)``); the others ignore the seed."""
    if not isinstance(name, str) or name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if (isinstance(severity, bool) or not isinstance(severity, (int, np.integer))
            or not 0 <= severity <= SEVERITIES[-1]):
        raise ValueError(f"severity {severity!r}: expected 0 (the identity) or one of "
                         f"{', '.join(map(str, SEVERITIES))}")
    image = _check_image(image)
    if severity == 0:
        return image.copy()
    rng = np.random.default_rng(seed) if CORRUPTIONS[name].random else None
    out = _FUNCTIONS[name](image, int(severity), rng)
    assert out.shape == image.shape and out.dtype == np.uint8, (name, out.shape, out.dtype)
    return out
