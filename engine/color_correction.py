"""img2img colour correction (option `img2img_color_correction`, A1111 modules/processing.py:
setup_color_correction, apply_color_correction).

A1111 keeps the LAB form of each processed init image (`setup_color_correction`), and for each result
(`apply_color_correction`): converts it to LAB, matches its histograms channel by channel to the kept one
(scikit-image `match_histograms`), converts back, then blends with blendmodes 2022's LUMINOSITY mode: hue and
saturation of the matched image, luminosity of the generated one.

A1111 uses OpenCV, scikit-image and blendmodes for this; the engine uses none of them, so each step is written
here in NumPy to give the same bytes: OpenCV's 8-bit RGB↔LAB (its bit-exact fixed-point path, with the lookup
tables it builds), scikit-image's histogram matching for unsigned integers, and blendmodes' blend and its
truncation to 8 bits. tests/engine/test_color_correction.py checks each against the library itself.
"""

from __future__ import annotations

import struct
from functools import cache

import numpy as np
from PIL import Image

# -- OpenCV's constants (modules/imgproc/src/color_lab.cpp), as the exact doubles it stores ------------------


def _double(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


# sRGB → XYZ and XYZ → sRGB (rows), and the D65 white point.
_RGB2XYZ = np.array([_double(b) for b in (
    0x3FDA65A14488C60D, 0x3FD6E297396D0918, 0x3FC71819D2391D58,
    0x3FCB38CDA6E75FF6, 0x3FE6E297396D0918, 0x3FB279AAE6C8F755,
    0x3F93CC4AC6CDAF4B, 0x3FBE836EB4E98138, 0x3FEE68427418D691)]).reshape(3, 3)
_XYZ2RGB = np.array([_double(b) for b in (
    0x4009EC804102FF8F, 0xBFF8982A9930BE0E, 0xBFDFE7FF583A53B9,
    0xBFEF042528AE74F3, 0x3FFE040F23897204, 0x3FA546D3F9E7B80B,
    0x3FAC7DE5082CF52C, 0xBFCA1E14BDFD2631, 0x3FF0EABEF06B3786)]).reshape(3, 3)
_D65 = (_double(0x3FEE6A22B3892EE8), 1.0, _double(0x3FF16B8950763A19))

_LAB_SHIFT = 12  # xyz_shift
_GAMMA_SHIFT = 3
_LAB_SHIFT2 = _LAB_SHIFT + _GAMMA_SHIFT
_INV_GAMMA_SHIFT = 12
_INV_GAMMA_TAB_SIZE = 1 << _INV_GAMMA_SHIFT
_CBRT_TAB_SIZE_B = 256 * 3 // 2 * (1 << _GAMMA_SHIFT)
_LUT_BASE = 1 << 14
_MIN_AB = -8145
_F32 = np.float32


def _half_even(x: float) -> int:
    """cvRound: round half to even."""
    return int(round(float(x)))


def _gamma(x: np.float32) -> np.float32:
    """`applyGamma` in double, returned as float."""
    xd = float(x)
    value = xd / (323 / 25) if xd <= 809 / 20000 else ((xd + 11 / 200) / (1 + 11 / 200)) ** (12 / 5)
    return _F32(value)


def _inv_gamma(x: np.float32) -> np.float32:
    xd = float(x)
    value = xd * (323 / 25) if xd <= 7827 / 2500000 else xd ** (1 / (12 / 5)) * (1 + 11 / 200) - 11 / 200
    return _F32(value)


_CBRT_NUM = [_double(b) for b in (0x4046A09E6653BA70, 0x406808F46C6116E0, 0x405DCA97439CAE14, 0x402ADD70D2827500,
                                    0x3FC4F15F83F55D2D)]
_CBRT_DEN = [_double(b) for b in (0x402D9E20660EDB21, 0x4062FF15C0285815, 0x406510D06A8112CE, 0x4040FECBC9E2C375,
                                    0x3FF0000000000000)]


def _cbrt(x: np.float32) -> np.float32:
    """OpenCV's softfloat `f32_cbrt` (Turkowski's rational approximation, mantissa truncated) for x > 0: it is
    not correctly rounded, and its last bit decides some table entries."""
    bits = int(np.asarray(x, dtype=np.float32).view(np.uint32))
    exponent = ((bits >> 23) & 0xFF) - 127
    shx = int(np.fmod(exponent, 3))  # C's remainder takes the dividend's sign
    shx -= 3 if shx >= 0 else 0
    exponent = (exponent - shx) // 3 - 1
    fr = struct.unpack("<d", struct.pack("<Q", ((shx + 1023) << 52) | ((bits & 0x7FFFFF) << 29)))[0]
    a1, a2, a3, a4, a5 = _CBRT_NUM
    a6, a7, a8, a9, a10 = _CBRT_DEN
    fr = ((((a1 * fr + a2) * fr + a3) * fr + a4) * fr + a5) / ((((a6 * fr + a7) * fr + a8) * fr + a9) * fr + a10)
    fraction = (struct.unpack("<Q", struct.pack("<d", fr))[0] & ((1 << 52) - 1)) >> 29
    out = ((exponent + 127) << 23) | fraction
    return np.asarray(out, dtype=np.uint32).view(np.float32)[()]


def _f_lab(x: np.float32) -> np.float32:
    """x < (6/29)³ ? fma(x, 841/108, 16/116) : cbrt(x), in float (the fma rounded once)."""
    lthresh = _F32(216) / _F32(24389)
    if x < lthresh:
        return _F32(float(x) * float(_F32(841) / _F32(108)) + float(_F32(16) / _F32(116)))
    return _cbrt(x)


@cache
def _tables() -> dict[str, np.ndarray | tuple]:
    """OpenCV's `initLabTabs` (the 8-bit parts) and the fixed-point matrices of RGB2Lab_b / Lab2RGBinteger."""
    f255 = _F32(255)
    int_scale = _F32(255 * (1 << _GAMMA_SHIFT))
    gamma = np.array([_half_even(int_scale * _gamma(_F32(i) / f255)) for i in range(256)], dtype=np.int64)
    inv_scale = _F32(1) / _F32(_INV_GAMMA_TAB_SIZE)
    inv_gamma = np.array([_half_even(f255 * _inv_gamma(inv_scale * _F32(i))) for i in range(_INV_GAMMA_TAB_SIZE)],
                         dtype=np.int64)
    cb_scale = _F32(1) / (f255 * _F32(1 << _GAMMA_SHIFT))
    lshift2 = _F32(1 << _LAB_SHIFT2)
    cbrt = np.array([_half_even(lshift2 * _f_lab(cb_scale * _F32(i))) for i in range(_CBRT_TAB_SIZE_B)],
                    dtype=np.int64)
    y_tab = np.empty(256, dtype=np.int64)
    fy_tab = np.empty(256, dtype=np.int64)
    for i in range(256):
        if i <= 20:
            y_tab[i] = _half_even(_F32(i * _LUT_BASE * 20 * 9) / _F32(17 * 29 * 29 * 29))
            fy_tab[i] = _half_even(_F32(_LUT_BASE) * (_F32(16) / _F32(116) + _F32(i * 5) / _F32(3 * 17 * 29)))
        else:
            fy = _F32(i * 100 * _LUT_BASE) / _F32(255 * 116) + _F32(16 * _LUT_BASE) / _F32(116)
            fy_tab[i] = _half_even(fy)
            y_tab[i] = _half_even(fy * fy * fy / _F32(_LUT_BASE * _LUT_BASE))
    i = np.arange(_MIN_AB, _LUT_BASE * 9 // 4 + _MIN_AB, dtype=np.int64)
    # C integer division truncates toward zero.
    low = np.trunc(i * 108 / 841).astype(np.int64) - (_LUT_BASE * 16 // 116 * 108 // 841)
    high = (i * i // _LUT_BASE) * i // _LUT_BASE
    ab_to_xz = np.where(i <= 3390, low, high)
    lshift = float(1 << _LAB_SHIFT)
    to_xyz = np.array([[_half_even(lshift * _RGB2XYZ[r, c] / _D65[r]) for c in range(3)] for r in range(3)],
                      dtype=np.int64)
    to_rgb = np.array([[_half_even(lshift * _XYZ2RGB[r, c] * _D65[c]) for c in range(3)] for r in range(3)],
                      dtype=np.int64)
    return {"gamma": gamma, "inv_gamma": inv_gamma, "cbrt": cbrt, "y": y_tab, "fy": fy_tab,
            "ab_to_xz": ab_to_xz, "to_xyz": to_xyz, "to_rgb": to_rgb}


def _descale(x: np.ndarray, n: int) -> np.ndarray:
    return (x + (1 << (n - 1))) >> n


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """OpenCV `cvtColor(rgb, COLOR_RGB2LAB)` for uint8 [..., 3] arrays: L·255/100, a + 128, b + 128."""
    t = _tables()
    linear = t["gamma"][np.asarray(rgb, dtype=np.uint8)].astype(np.int64)
    xyz = _descale(linear @ t["to_xyz"].T, _LAB_SHIFT)
    f = t["cbrt"][xyz]
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    l_scale = (116 * 255 + 50) // 100
    l_shift = -((16 * 255 * (1 << _LAB_SHIFT2) + 50) // 100)
    half = 128 * (1 << _LAB_SHIFT2)
    lab = np.stack([_descale(l_scale * fy + l_shift, _LAB_SHIFT2),
                    _descale(500 * (fx - fy) + half, _LAB_SHIFT2),
                    _descale(200 * (fy - fz) + half, _LAB_SHIFT2)], axis=-1)
    return np.clip(lab, 0, 255).astype(np.uint8)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """OpenCV `cvtColor(lab, COLOR_LAB2RGB)` for uint8 [..., 3] arrays (its bit-exact integer path)."""
    t = _tables()
    lab = np.asarray(lab, dtype=np.uint8).astype(np.int64)
    ll, aa, bb = lab[..., 0], lab[..., 1], lab[..., 2]
    y, ify = t["y"][ll], t["fy"][ll]
    adiv = ((5 * aa * 53687 + (1 << 7)) >> 13) - 128 * _LUT_BASE // 500
    bdiv = ((bb * 41943 + (1 << 4)) >> 9) - 128 * _LUT_BASE // 200 + 1
    x = t["ab_to_xz"][ify + adiv - _MIN_AB]
    z = t["ab_to_xz"][ify - bdiv - _MIN_AB]
    shift = _LAB_SHIFT + (14 - _INV_GAMMA_SHIFT)
    xyz = np.stack([x, y, z], axis=-1)
    rgb = np.clip(_descale(xyz @ t["to_rgb"].T, shift), 0, _INV_GAMMA_TAB_SIZE - 1)
    return np.clip(t["inv_gamma"][rgb], 0, 255).astype(np.uint8)


def match_histograms(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """scikit-image `match_histograms(image, reference, channel_axis=-1)` for uint8 images: per channel, each
    value maps to the reference value at the same quantile (linear interpolation between the reference's
    distinct values); the result is written back into a uint8 array, which truncates."""
    out = np.empty(image.shape, dtype=np.uint8)
    for c in range(image.shape[-1]):
        source = image[..., c].reshape(-1)
        template = reference[..., c].reshape(-1)
        src_counts = np.bincount(source)
        tmpl_counts = np.bincount(template)
        tmpl_values = np.nonzero(tmpl_counts)[0]
        tmpl_counts = tmpl_counts[tmpl_values]
        src_quantiles = np.cumsum(src_counts) / source.size
        tmpl_quantiles = np.cumsum(tmpl_counts) / template.size
        mapped = np.interp(src_quantiles, tmpl_quantiles, tmpl_values)
        out[..., c] = mapped[source].reshape(image.shape[:-1])
    return out


def _lum(colours: np.ndarray) -> np.ndarray:
    return colours[..., 0] * 0.299 + colours[..., 1] * 0.587 + colours[..., 2] * 0.114


def blend_luminosity(background: Image.Image, foreground: Image.Image) -> Image.Image:
    """blendmodes 2022 `blendLayers(background, foreground, BlendType.LUMINOSITY)` for opaque layers, as RGB:
    the background's colour with the foreground's luminosity, clipped to [0, 1] and truncated to 8 bits."""
    bg = np.asarray(background.convert("RGB")) / 255
    fg = np.asarray(foreground.convert("RGB")) / 255
    colours = bg + (_lum(fg) - _lum(bg))[..., None]
    lum = _lum(colours)[..., None]
    low = colours.min(axis=-1, keepdims=True)
    high = colours.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Both corrections use the luminosity and extremes taken before either (blendmodes' per-pixel loop).
        colours = np.where(low < 0, lum + (colours - lum) * lum / (lum - low), colours)
        colours = np.where(high > 1, lum + (colours - lum) * (1 - lum) / (high - lum), colours)
    return Image.fromarray((np.clip(colours, 0, 1) * 255).astype(np.uint8))


def correction_target(image: np.ndarray) -> np.ndarray:
    """`setup_color_correction`: the LAB form of a processed init image ([H, W, 3] uint8 RGB)."""
    return rgb_to_lab(image)


def apply_color_correction(target: np.ndarray, image: Image.Image) -> Image.Image:
    """`apply_color_correction`: `image`'s LAB histograms matched to `target`, back to RGB, then its own
    luminosity restored (A1111 modules/processing.py: apply_color_correction)."""
    rgb = np.asarray(image.convert("RGB"))
    matched = lab_to_rgb(match_histograms(rgb_to_lab(rgb), target))
    return blend_luminosity(Image.fromarray(matched), image)
