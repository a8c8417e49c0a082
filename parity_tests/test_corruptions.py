"""ImageNet-C's corruptions (``common.core.corruptions``): the identity at severity 0, determinism,
shapes, monotone severities on real images (scikit-learn's photographs and digits), and each
formula checked against an independent computation from the published definition and table
(Hendrycks & Dietterich, ICLR 2019, ``make_imagenet_c.py``). No framework needed."""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
import pytest
from PIL import Image

from common.core.corruptions import CORRUPTIONS, SEVERITIES, Corruption, corrupt, plasma_fractal

NAMES = list(CORRUPTIONS)
REQUIRED = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "gaussian_blur",
            "contrast", "brightness", "fog", "dark", "pixelate", "jpeg_compression")
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "fog"}
# corruptions that treat each channel alone, without randomness tied to the array's shape
CHANNELWISE = ("defocus_blur", "gaussian_blur", "contrast", "brightness", "dark", "pixelate", "fog")


def rgb(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def flat(value, shape=(128, 128, 3)):
    return np.full(shape, value, np.uint8)


@lru_cache(maxsize=None)
def photos(size: int) -> tuple[np.ndarray, ...]:
    """scikit-learn's two photographs (china.jpg, flower.jpg), centre square, resized."""
    from sklearn.datasets import load_sample_images
    out = []
    for img in load_sample_images().images:
        h, w = img.shape[:2]
        s = min(h, w)
        square = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR)))
    return tuple(out)


@lru_cache(maxsize=None)
def digits(size: int = 32) -> tuple[np.ndarray, ...]:
    """The first four of scikit-learn's 8x8 digits, as uint8, resized as the suite's runs do."""
    from sklearn.datasets import load_digits
    imgs = np.round(load_digits().images[:4] * (255 / 16)).astype(np.uint8)
    return tuple(np.asarray(Image.fromarray(d).resize((size, size), Image.BILINEAR)) for d in imgs)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


def robust_std(values: np.ndarray) -> float:
    """sigma from the median absolute deviation: blind to clipped tails."""
    v = values.astype(np.float64).ravel()
    return float(np.median(np.abs(v - np.median(v))) / 0.6744897501960817)


# -- the table ------------------------------------------------------------------------------------

def test_the_table():
    assert SEVERITIES == (1, 2, 3, 4, 5)
    assert set(REQUIRED) <= set(CORRUPTIONS)
    for name, c in CORRUPTIONS.items():
        assert isinstance(c, Corruption) and c.name == name
        assert c.description.startswith(f"{name}: ") and "\n" not in c.description
        assert c.random == (name in RANDOM), name
        assert c.monotone
    assert {c.source for n, c in CORRUPTIONS.items() if n != "dark"} <= {"ImageNet-C",
                                                                          "ImageNet-C (extra)"}
    assert "ImageNet-C" not in CORRUPTIONS["dark"].source.split(" (")[0]   # the suite's own
    assert "not ImageNet-C" in CORRUPTIONS["dark"].description
    with pytest.raises(Exception):
        CORRUPTIONS["fog"].monotone = False   # frozen


# -- identity, shapes, determinism ----------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(17, 23), (17, 23, 3), (8, 8)])
def test_severity_zero_is_an_identity_copy(name, shape):
    img = rgb(shape)
    out = corrupt(img, name, 0)
    assert out.dtype == np.uint8 and np.array_equal(out, img)
    assert not np.shares_memory(out, img)


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_and_the_input_left_alone(name):
    for shape in [(17, 23), (17, 23, 3), (8, 8), (8, 8, 3), (1, 1), (96, 96), (33, 96, 3),
                  (224, 224, 3)]:
        img = rgb(shape)
        before = img.copy()
        for severity in SEVERITIES:
            out = corrupt(img, name, severity, seed=1)
            assert out.shape == shape and out.dtype == np.uint8, (shape, severity)
            assert not np.shares_memory(out, img)
        assert np.array_equal(img, before), f"{name} modified its input {shape}"


@pytest.mark.parametrize("name", NAMES)
def test_read_only_and_strided_inputs(name):
    img = rgb((24, 30, 3))
    view = img[:, ::-1]                     # negative strides
    view.flags.writeable = False            # as np.asarray of a PIL image is
    assert np.array_equal(corrupt(view, name, 3, seed=2),
                          corrupt(np.ascontiguousarray(view), name, 3, seed=2))


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_blind_to_global_random_state(name):
    img = photos(96)[0]
    np.random.seed(1)
    a = corrupt(img, name, 3, seed=7)
    np.random.seed(2)
    np.random.random(10)
    b = corrupt(img, name, 3, seed=7)
    assert np.array_equal(a, b)
    assert np.array_equal(corrupt(img, name, 3, seed=(7, 4)), corrupt(img, name, 3, seed=[7, 4]))
    others = [corrupt(img, name, 3, seed=8), corrupt(img, name, 3, seed=(7, 5))]
    if name in RANDOM:
        assert not np.array_equal(a, others[0]) and not np.array_equal(others[0], others[1])
    else:
        assert all(np.array_equal(a, o) for o in others)


@pytest.mark.parametrize("name", CHANNELWISE)
def test_a_grey_image_is_treated_as_one_channel(name):
    grey = photos(96)[1].mean(axis=-1).astype(np.uint8)
    as_rgb = np.repeat(grey[..., None], 3, axis=-1)
    for severity in (1, 4):
        out = corrupt(grey, name, severity, seed=3)
        assert out.shape == grey.shape
        for ch in range(3):
            assert np.array_equal(out, corrupt(as_rgb, name, severity, seed=3)[..., ch]), severity


# -- monotone in severity -------------------------------------------------------------------------

# fog's table keeps c0 = 2.5 at severities 3 and 4 and changes the fractal's texture instead, so the
# deviation from the clean image is not monotone for it; its attenuation is (test_fog_attenuates).
MONOTONE_BY_DEVIATION = [n for n in NAMES if CORRUPTIONS[n].monotone and n != "fog"]


@pytest.mark.parametrize("name", MONOTONE_BY_DEVIATION)
def test_stronger_with_each_severity_on_photographs(name):
    for size in (224, 96):
        for i, img in enumerate(photos(size)):
            dev = [mad(corrupt(img, name, s, seed=(0, i)), img) for s in (0, *SEVERITIES)]
            assert all(b > a for a, b in zip(dev, dev[1:])), (size, i, np.round(dev, 2))


@pytest.mark.parametrize("name", MONOTONE_BY_DEVIATION)
def test_never_weaker_with_severity_on_digits(name):
    """At 32x32 the blurs' lowest severities are sub-pixel: equal, never weaker."""
    for i, img in enumerate(digits(32)):
        dev = [mad(corrupt(img, name, s, seed=(0, i)), img) for s in (0, *SEVERITIES)]
        assert all(b >= a for a, b in zip(dev, dev[1:])), (i, np.round(dev, 2))
        assert dev[-1] > 0


# -- noise ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("severity, c", list(enumerate((.08, .12, .18, .26, .38), start=1)))
def test_gaussian_noise_has_the_published_sigma(severity, c):
    out = corrupt(flat(128), "gaussian_noise", severity) / 255
    assert abs(robust_std(out) - c) < 0.05 * c
    assert abs(np.median(out) - 128 / 255) < 0.01


@pytest.mark.parametrize("severity, c", list(enumerate((60, 25, 12, 5, 3), start=1)))
def test_shot_noise_counts_c_photons_at_full_scale(severity, c):
    out = corrupt(flat(128), "shot_noise", severity)
    photons = np.unique(out) / 255 * c     # each level is k / c for a count k, truncated to uint8
    below = np.round(photons) - photons
    assert np.all((below > -1e-9) & (below < c / 255 + 1e-9)), photons
    x = out / 255
    if c >= 12:   # Poisson(x c) / c has mean x and variance x / c (clipping at 1 negligible here)
        assert abs(x.mean() - 128 / 255) < 0.01
        assert abs(x.std() - math.sqrt(128 / 255 / c)) < 0.05 * math.sqrt(128 / 255 / c)


@pytest.mark.parametrize("severity, c", list(enumerate((.03, .06, .09, .17, .27), start=1)))
def test_impulse_noise_flips_a_fraction_c_to_salt_or_pepper(severity, c):
    out = corrupt(flat(128), "impulse_noise", severity, seed=severity)
    salt, pepper, kept = np.mean(out == 255), np.mean(out == 0), np.mean(out == 128)
    assert salt + pepper + kept == 1
    assert abs(salt + pepper - c) < 0.1 * c and abs(salt - pepper) < 0.15 * c
    # each channel is flipped, and salted, independently (the reference draws per value)
    hit = out != 128
    assert abs(np.mean(hit[..., 0] & hit[..., 1]) - c * c) < 0.3 * c * c + 0.002
    if c >= .17:
        both = hit[..., 0] & hit[..., 1]
        assert abs(np.mean(out[both][:, 0] == out[both][:, 1]) - 0.5) < 0.08


@pytest.mark.parametrize("severity, c", list(enumerate((.15, .2, .35, .45, .6), start=1)))
def test_speckle_noise_is_multiplicative(severity, c):
    out = corrupt(flat(128), "speckle_noise", severity) / 255
    assert abs(robust_std(out) - c * 128 / 255) < 0.05 * c * 128 / 255
    assert np.array_equal(corrupt(flat(0), "speckle_noise", severity), flat(0))


# -- blur -----------------------------------------------------------------------------------------

def lattice_disk(radius: float) -> set[tuple[int, int]]:
    n = int(radius) + 1
    return {(y, x) for y in range(-n, n + 1) for x in range(-n, n + 1) if x * x + y * y <= radius ** 2}


@pytest.mark.parametrize("shape, radius", [((224, 224), 3), ((112, 112), 1.5), ((448, 448), 6),
                                           ((112, 300), 1.5), ((300, 112), 1.5),
                                           ((32, 32), 3 * 32 / 224)])
def test_defocus_blur_of_a_point_is_a_disk(shape, radius):
    """Severity 1 (radius 3 px at 224, alias blur .1, too small to show), the radius scaled by
    min(H, W) / 224: sub-pixel, so the identity, at 32x32."""
    img = np.zeros(shape, np.uint8)
    cy, cx = shape[0] // 2, shape[1] // 2
    img[cy, cx] = 255
    out = corrupt(img, "defocus_blur", 1)
    disk = lattice_disk(radius)
    assert {(y - cy, x - cx) for y, x in zip(*np.nonzero(out))} == disk
    assert set(out[np.nonzero(out)].tolist()) == {255 // len(disk)}


def defocus_edge_profile(radius: float, alias_blur: float) -> np.ndarray:
    """Weights of a vertical step edge seen through the published kernel: the lattice disk's
    column sums, normalised, smoothed by the 3-tap Gaussian of sigma alias_blur."""
    n = int(radius) + 2
    cols = np.array([sum(1 for y in range(-n, n + 1) if x * x + y * y <= radius ** 2)
                     for x in range(-n, n + 1)], dtype=np.float64)
    g = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * alias_blur ** 2))
    return np.convolve(cols / cols.sum(), g / g.sum(), mode="same")


@pytest.mark.parametrize("size, severity, radius, alias_blur",
                         [(224, 1, 3, .1), (224, 2, 4, .5), (224, 3, 6, .5),
                          (112, 4, 4, .5), (112, 5, 5, .5), (64, 5, 10 * 64 / 224, .5)])
def test_defocus_blur_of_an_edge(size, severity, radius, alias_blur):
    """The table (3, .1), (4, .5), (6, .5), (8, .5), (10, .5), radii scaled by min(H, W) / 224."""
    img = np.zeros((size, size), np.uint8)
    edge = size // 2
    img[:, edge:] = 255
    row = corrupt(img, "defocus_blur", severity)[size // 2].astype(np.int64)
    w = defocus_edge_profile(radius, alias_blur)
    n = len(w) // 2
    # column j sees kernel offsets k with j + k >= edge
    expected = [255 * w[n + max(-n, min(n + 1, edge - j)):].sum() for j in range(size)]
    assert np.abs(row - np.floor(np.array(expected) + 1e-6)).max() <= 1


@pytest.mark.parametrize("shape, severity, sigma",
                         [((224, 224), 1, 1), ((224, 224), 2, 2), ((224, 224), 3, 3),
                          ((224, 224), 4, 4), ((224, 224), 5, 6), ((112, 112), 5, 3),
                          ((56, 56), 5, 1.5), ((112, 224), 5, 3), ((224, 112), 4, 2)])
def test_gaussian_blur_of_edges(shape, severity, sigma):
    """sigma 1, 2, 3, 4, 6 px at 224, scaled by min(H, W) / 224; the kernel is the sampled
    Gaussian truncated at 4 sigma, the borders extend the nearest pixel (scikit-image's
    ``filters.gaussian`` defaults); its tail sums are close to the normal CDF once sigma is a few
    pixels. The row: a bright stripe at the left border, dark, then bright from the middle."""
    h, w = shape
    edge = w // 2
    profile = np.zeros(w)
    profile[:3] = profile[edge:] = 255
    img = np.repeat(np.repeat(profile.astype(np.uint8)[None, :, None], h, axis=0), 3, axis=2)
    row = corrupt(img, "gaussian_blur", severity)[h // 2, :, 1].astype(np.int64)
    radius = int(4 * sigma + 0.5)
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    expected = np.correlate(np.pad(profile, radius, mode="edge"), taps / taps.sum(), mode="valid")
    assert np.abs(row - np.floor(expected + 1e-6)).max() <= 1
    if sigma >= 3:
        cdf = [0.5 * (1 + math.erf((j - edge + 0.5) / (sigma * math.sqrt(2)))) for j in range(w)]
        middle = slice(edge - 3 * radius // 4, None)    # away from the stripe
        assert np.abs(row[middle] - np.floor(255 * np.array(cdf))[middle]).max() <= 1


# -- weather --------------------------------------------------------------------------------------

def test_plasma_fractal():
    rng = np.random.default_rng(0)
    p = plasma_fractal(64, 2, rng)
    assert p.shape == (64, 64) and p.min() == 0 and p.max() == 1
    assert np.array_equal(p, plasma_fractal(64, 2, np.random.default_rng(0)))
    assert p.std() > 0.05
    for bad in (1, 3, 48):
        with pytest.raises(ValueError, match="power of two"):
            plasma_fractal(bad, 2, rng)


@pytest.mark.parametrize("severity, c0", list(enumerate((1.5, 2, 2.5, 2.5, 3), start=1)))
def test_fog_of_a_constant_image_spans_the_normalisation(severity, c0):
    """On a constant image m, fog is (m + c0 p) m / (m + c0): m where the plasma is 1 and
    m^2 / (m + c0) where it is 0 (both present: a power-of-two side uses the whole map)."""
    m = 200 / 255
    out = corrupt(flat(200, (64, 64)), "fog", severity, seed=severity)
    assert out.max() in (199, 200)
    assert abs(int(out.min()) - int(255 * m * m / (m + c0))) <= 1


@pytest.mark.parametrize("severity, c0", list(enumerate((1.5, 2, 2.5, 2.5, 3), start=1)))
def test_fog_attenuates_the_image_by_m_over_m_plus_c0(severity, c0):
    """Two images with the same maximum under the same plasma differ by (x - x') m / (m + c0)."""
    a = photos(96)[0].copy()
    a[0, 0] = 255
    b = a.copy()
    b[40:90, 30:80] //= 3
    fa, fb = (corrupt(x, "fog", severity, seed=5).astype(np.int64) for x in (a, b))
    got = (fa - fb)[40:90, 30:80]
    expected = (a.astype(np.int64) - b)[40:90, 30:80] / (1 + c0)   # m = 1
    assert np.abs(got - expected).max() <= 1.0


def test_fog_is_stronger_by_attenuation():
    """What is left of the image, m / (m + c0): 1 / 2.5, 1 / 3, 1 / 3.5, 1 / 3.5, 1 / 4 for m = 1."""
    a = photos(96)[1].copy()
    a[0, 0] = 255
    b = a // 4
    b[0, 0] = 255
    left = []
    for severity in SEVERITIES:
        fa, fb = (corrupt(x, "fog", severity, seed=2).astype(np.int64) for x in (a, b))
        left.append((fa - fb).sum() / (a.astype(np.int64) - b).sum())
    assert np.allclose(left, [1 / 2.5, 1 / 3, 1 / 3.5, 1 / 3.5, 1 / 4], atol=0.01)
    assert left[0] > left[1] > left[2] and left[3] > left[4]


@pytest.mark.parametrize("name, c", [("brightness", c) for c in (.1, .2, .3, .4, .5)]
                         + [("dark", -c) for c in (.1, .2, .3, .4, .5)])
def test_brightness_and_dark_move_the_hsv_value(name, c):
    """For fixed hue and saturation RGB is proportional to V: out = x V' / V, V' = clip(V + c)."""
    severity = round(abs(c) * 10)
    img = photos(96)[0].copy()
    img[0, 0] = 0                                    # a black pixel: grey V' under brightness
    x = img / 255
    v = x.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(v > 0, x * np.clip(v + c, 0, 1) / v, np.clip(c, 0, 1))
    out = corrupt(img, name, severity)
    assert np.abs(out - np.floor(255 * expected + 1e-6)).max() <= 1
    grey = img[..., 0]
    assert np.abs(corrupt(grey, name, severity).astype(np.int64)
                  - np.floor(255 * np.clip(grey / 255 + c, 0, 1) + 1e-6)).max() <= 1


# -- digital --------------------------------------------------------------------------------------

@pytest.mark.parametrize("severity, c", list(enumerate((.4, .3, .2, .1, .05), start=1)))
def test_contrast_against_numpy(severity, c):
    for img in (photos(96)[1], photos(96)[1][..., 2], rgb((17, 23, 3))):
        x = img / 255.
        means = x.mean(axis=(0, 1), keepdims=True)    # per channel, over the image
        expected = (np.clip((x - means) * c + means, 0, 1) * 255).astype(np.uint8)
        assert np.array_equal(corrupt(img, "contrast", severity), expected)


@pytest.mark.parametrize("size, severity, block", [(224, 2, 2), (224, 5, 4), (96, 2, 2), (96, 5, 4)])
def test_pixelate_makes_blocks(size, severity, block):
    """c = .6, .5, .4, .3, .25 of the side: .5 and .25 give 2x2 and 4x4 blocks of their mean."""
    img = photos(size)[0]
    out = corrupt(img, "pixelate", severity).astype(np.int64)
    blocks = out.reshape(size // block, block, size // block, block, 3)
    assert np.all(blocks == blocks[:, :1, :, :1])
    means = img.reshape(size // block, block, size // block, block, 3).mean(axis=(1, 3))
    assert np.abs(blocks[:, 0, :, 0] - means).max() <= 1


@pytest.mark.parametrize("severity, quality", list(enumerate((25, 18, 15, 10, 7), start=1)))
def test_jpeg_compression_at_the_published_quality(severity, quality):
    for img in (photos(96)[0], photos(96)[0][..., 1]):
        buffer = io.BytesIO()
        Image.fromarray(img).save(buffer, format="JPEG", quality=quality)
        expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
        assert np.array_equal(corrupt(img, "jpeg_compression", severity), expected)
    assert np.abs(corrupt(flat(128, (32, 32, 3)), "jpeg_compression", severity).astype(int)
                  - 128).max() <= 1


# -- errors ---------------------------------------------------------------------------------------

def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown corruption 'snowfall'") as e:
        corrupt(rgb((8, 8)), "snowfall", 1)
    assert all(n in str(e.value) for n in NAMES)
    with pytest.raises(ValueError, match=r"unknown corruption \['fog'\]"):
        corrupt(rgb((8, 8)), ["fog"], 1)


def test_numpy_integer_severities():
    img = rgb((8, 8, 3))
    assert np.array_equal(corrupt(img, "contrast", np.int64(2)), corrupt(img, "contrast", 2))


@pytest.mark.parametrize("severity", [6, -1, 2.0, True, "3", None])
def test_a_bad_severity_is_named(severity):
    with pytest.raises(ValueError, match=r"severity .*1, 2, 3, 4, 5") as e:
        corrupt(rgb((8, 8)), "contrast", severity)
    assert repr(severity) in str(e.value)


@pytest.mark.parametrize("image, message", [
    (np.zeros((8, 8), np.float32), "dtype float32"),
    (np.zeros((8, 8, 3), np.float64), "dtype float64"),
    (np.zeros((8, 8), np.uint16), "dtype uint16"),
    (np.zeros(8, np.uint8), r"shape \(8,\)"),
    (np.zeros((8, 8, 4), np.uint8), r"shape \(8, 8, 4\)"),
    (np.zeros((8, 8, 1), np.uint8), r"shape \(8, 8, 1\)"),
    (np.zeros((2, 8, 8, 3), np.uint8), r"shape \(2, 8, 8, 3\)"),
    (np.zeros((0, 8), np.uint8), "empty"),
    ([[0, 1], [2, 3]], "numpy array"),
])
def test_a_bad_image_is_named(image, message):
    for severity in (0, 2):
        with pytest.raises(ValueError, match=f"image: .*{message}"):
            corrupt(image, "gaussian_noise", severity)
