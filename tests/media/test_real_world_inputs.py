"""Real-world inputs (issue 18, items 1-5), each built here as a real file.

Masks in every image mode and video pixel format a tool writes (scaled to 8 bits, one threshold,
alpha rules), zips from Windows (backslashes) and macOS (NFD names), captions saved by Notepad
(UTF-16 with a BOM), and broken videos (cut off, not a video, no video stream, unknown codec):
every problem is named with its file, in the user's terms.
"""

from __future__ import annotations

import codecs
import io
import unicodedata
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from iclora_trainer.dataset.media import fit_mask
from iclora_trainer.dataset.preflight import FitParams, prepare_dataset
from iclora_trainer.dataset.prepared import PreparedManifest, read_mask
from iclora_trainer.errors import DatasetError
from tests.helpers import solid_frames, video, write_zip

pytestmark = pytest.mark.media

S = 32  # masks and clips are S x S and fitted to S x S: no resampling, every pixel is checked
N = 9


def params(n=N, trigger="repl4ce") -> FitParams:
    return FitParams(number_of_frames=n, frame_rate=24, width=S, height=S, trigger_phrase=trigger)


_CLIP: list[bytes] = []


def clip() -> bytes:
    if not _CLIP:
        _CLIP.append(video(solid_frames(12, S, S)))
    return _CLIP[0]


def prepare(tmp_path: Path, entries: dict[str, bytes], p: FitParams | None = None):
    (tmp_path / "run").mkdir(exist_ok=True)
    z = write_zip(tmp_path / "run" / "d.zip", entries)
    out = tmp_path / "run" / "out"
    return prepare_dataset(z, p or params(), out, tmp_path / "run" / "work"), out


def prepared_mask(tmp_path: Path, name: str, data: bytes) -> np.ndarray:
    """(N, S, S) bool: the mask the preflight prepared from `name` (with two good clips)."""
    report, out = prepare(tmp_path, {"s_start.mp4": clip(), "s_end.mp4": clip(), name: data})
    assert report.ok, report.as_dict()
    return read_mask(out / PreparedManifest.read(out).triplets[0].mask)


def fitted_mask(tmp_path: Path, name: str, data: bytes) -> np.ndarray:
    """(3, S, S) bool: the mask `fit_mask` (the validation preview's path) fits from the file."""
    path = tmp_path / name
    path.write_bytes(data)
    return fit_mask(path, S, S, 3, 24.0, name)


# ---------------------------------------------------------------------------------------------
# 1. Masks: every mode and pixel format -> 8-bit levels by scaling -> level > 127 = regenerate

def levels16() -> np.ndarray:
    """The reference mask in 16-bit units: right half white, a faint 3% patch (2000 of 65535,
    "keep") top-left, and bottom-left a 45% strip (keep) beside a 55% strip (regenerate)."""
    m = np.zeros((S, S), np.uint16)
    m[:, 16:] = 65535
    m[:8, :8] = 2000
    m[24:, :8] = round(0.45 * 65535)
    m[24:, 8:16] = round(0.55 * 65535)
    return m


EXPECTED = levels16() > 32767  # the right half and the 55% strip


def levels8() -> np.ndarray:
    return np.rint(levels16() / 257).astype(np.uint8)  # 0, 8, 115, 140, 255


def _save(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _stored(displayed: np.ndarray, orientation: int) -> np.ndarray:
    """The array a camera stores so that EXIF `orientation` displays it as `displayed`."""
    return {3: np.rot90(displayed, 2), 6: np.rot90(displayed, 1), 8: np.rot90(displayed, -1)}[orientation].copy()


def _exif(orientation: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _palette_image(transparent_box: tuple[int, int, int, int] | None = None):
    from PIL import Image

    values = [0, 8, 115, 140, 255]
    idx = np.searchsorted(values, levels8()).astype(np.uint8)
    palette = [c for v in values for c in (v, v, v)]
    if transparent_box:
        y0, y1, x0, x1 = transparent_box
        idx[y0:y1, x0:x1] = len(values)  # white, but transparent
        palette += [255, 255, 255]
    img = Image.fromarray(idx, "P")
    img.putpalette(palette)
    return img


def image_case(case: str) -> tuple[str, bytes, np.ndarray]:
    """(file extension, bytes, expected bool mask) of an image mask written in `case`'s mode."""
    from PIL import Image

    l8, l16, expected = levels8(), levels16(), EXPECTED
    gray = Image.fromarray(l8)
    rgb = Image.fromarray(np.repeat(l8[..., None], 3, -1))
    if case == "1":
        return "png", _save(gray.convert("1", dither=Image.Dither.NONE), "PNG"), expected
    if case == "1-bmp":
        return "bmp", _save(gray.convert("1", dither=Image.Dither.NONE), "BMP"), expected
    if case == "L":
        return "png", _save(gray, "PNG"), expected
    if case == "L-jpeg":
        return "jpg", _save(gray, "JPEG", quality=95), expected
    if case == "L-webp":
        return "webp", _save(gray, "WEBP", lossless=True), expected
    if case == "LA":
        return "png", _save(Image.merge("LA", [gray, Image.new("L", gray.size, 255)]), "PNG"), expected
    if case == "P":
        return "png", _save(_palette_image(), "PNG"), expected
    if case == "P-transparency":  # a white (regenerate) block made transparent: keep
        img = _palette_image((0, 8, 16, 24))
        want = expected.copy()
        want[0:8, 16:24] = False
        return "png", _save(img, "PNG", transparency=5), want
    if case == "RGB":
        return "png", _save(rgb, "PNG"), expected
    if case == "RGB-jpeg":
        return "jpg", _save(rgb, "JPEG", quality=95), expected
    if case == "RGB-bmp":
        return "bmp", _save(rgb, "BMP"), expected
    if case == "RGB-colours":  # luminance (0.299 R + 0.587 G + 0.114 B): yellow 226 regenerates, blue 29 keeps
        arr = np.zeros((S, S, 3), np.uint8)
        arr[:, 16:] = (255, 255, 0)
        arr[:, :16] = (0, 0, 255)
        want = np.zeros((S, S), bool)
        want[:, 16:] = True
        return "png", _save(Image.fromarray(arr), "PNG"), want
    if case == "RGBA":
        return "png", _save(rgb.convert("RGBA"), "PNG"), expected
    if case == "CMYK-jpeg":
        return "jpg", _save(rgb.convert("CMYK"), "JPEG", quality=95), expected
    if case == "I;16":
        img = Image.fromarray(l16)
        assert img.mode == "I;16"
        return "png", _save(img, "PNG"), expected
    if case == "I;16-tiff":
        return "tiff", _save(Image.fromarray(l16), "TIFF"), expected
    if case == "I;16B-tiff":
        img = Image.fromarray(l16).convert("I").convert("I;16B")
        assert img.mode == "I;16B" and np.asarray(img).max() == 65535
        return "tif", _save(img, "TIFF"), expected
    if case == "I-16bit-range":  # 32-bit integers holding 16-bit levels (max <= 65535): /257
        return "tif", _save(Image.fromarray(l16.astype(np.int32)), "TIFF"), expected
    if case == "I-32bit-range":  # levels over the int32 range: scaled by 255 / (2**31 - 1)
        return "tif", _save(Image.fromarray(l16.astype(np.int32) * 32768), "TIFF"), expected
    if case == "F-0..1":
        return "tif", _save(Image.fromarray((l16 / 65535).astype(np.float32)), "TIFF"), expected
    if case == "F-0..255":
        return "tif", _save(Image.fromarray(l8.astype(np.float32)), "TIFF"), expected
    if case.startswith("EXIF"):  # EXIF orientation is applied before anything else
        _, orientation, mode = case.split("-")
        orientation = int(orientation)
        if mode == "L":
            img = Image.fromarray(_stored(l8, orientation))
            return "jpg", _save(img, "JPEG", quality=95, exif=_exif(orientation)), expected
        if mode == "I;16":
            img = Image.fromarray(_stored(l16, orientation))
            return "png", _save(img, "PNG", exif=_exif(orientation)), expected
        img = Image.fromarray(np.repeat(_stored(l8, orientation)[..., None], 3, -1)).convert("RGBA")
        return "png", _save(img, "PNG", exif=_exif(orientation)), expected
    raise AssertionError(case)


IMAGE_CASES = {  # case: the mode Pillow opens the file in
    "1": "1", "1-bmp": "1", "L": "L", "L-jpeg": "L", "L-webp": "RGB", "LA": "LA", "P": "P", "P-transparency": "P",
    "RGB": "RGB", "RGB-jpeg": "RGB", "RGB-bmp": "RGB", "RGB-colours": "RGB", "RGBA": "RGBA", "CMYK-jpeg": "CMYK",
    "I;16": "I;16", "I;16-tiff": "I;16", "I;16B-tiff": "I;16B", "I-16bit-range": "I", "I-32bit-range": "I",
    "F-0..1": "F", "F-0..255": "F", "EXIF-6-L": "L", "EXIF-8-I;16": "I;16", "EXIF-3-RGBA": "RGBA",
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_masks_of_every_mode_are_scaled_then_thresholded(tmp_path, case):
    from PIL import Image

    ext, data, expected = image_case(case)
    with Image.open(io.BytesIO(data)) as img:  # the file really is in the mode the case names
        assert img.mode == IMAGE_CASES[case]
        assert not case.startswith("EXIF") or img.getexif().get(0x0112) == int(case.split("-")[1])
    fitted = fitted_mask(tmp_path, f"m.{ext}", data)
    assert fitted.shape == (3, S, S)
    for frame in fitted:
        assert np.array_equal(frame, expected), f"{case}: {np.argwhere(frame != expected)[:5].tolist()}"
    prepared = prepared_mask(tmp_path, f"s_mask.{ext}", data)
    assert prepared.shape == (N, S, S)
    assert all(np.array_equal(frame, expected) for frame in prepared)


def test_faint_sixteen_bit_patch_is_keep_and_full_scale_is_regenerate(tmp_path):
    # The file: I;16 64x64, right half 65535, a top-left 20x20 patch of 2000 (3%), the rest 0.
    from PIL import Image

    levels = np.zeros((64, 64), np.uint16)
    levels[:, 32:] = 65535
    levels[:20, :20] = 2000
    data = _save(Image.fromarray(levels), "PNG")
    expected = levels > 32767
    (tmp_path / "mask.png").write_bytes(data)
    assert all(np.array_equal(f, expected) for f in fit_mask(tmp_path / "mask.png", 64, 64, 3, 24.0, "mask.png"))
    report, out = prepare(tmp_path, {"s_start.mp4": clip(), "s_end.mp4": clip(), "s_mask.png": data},
                          FitParams(number_of_frames=N, frame_rate=24, width=64, height=64))
    assert report.ok, report.as_dict()
    prepared = read_mask(out / PreparedManifest.read(out).triplets[0].mask)
    assert all(np.array_equal(f, expected) for f in prepared)


def _rgba(rgb: int, alpha: np.ndarray) -> bytes:
    from PIL import Image

    arr = np.zeros((S, S, 4), np.uint8)
    arr[..., :3] = rgb
    arr[..., 3] = alpha
    return _save(Image.fromarray(arr, "RGBA"), "PNG")


def alpha_case(case: str) -> tuple[bytes, np.ndarray]:
    """(PNG bytes, expected bool mask) for the alpha rules of docs/dataset.md."""
    from PIL import Image

    want = np.zeros((S, S), bool)
    if case == "semi-transparent-white-on-opaque-black":
        # Alpha multiplies luminance: white at alpha 140 -> 140 (regenerate), at alpha 100 -> 100 (keep).
        arr = np.zeros((S, S, 4), np.uint8)
        arr[..., 3] = 255
        arr[:, 16:24] = (255, 255, 255, 140)
        arr[:, 24:] = (255, 255, 255, 100)
        want[:, 16:24] = True
        return _save(Image.fromarray(arr, "RGBA"), "PNG"), want
    if case == "transparent-white-is-keep":
        alpha = np.full((S, S), 255, np.uint8)
        alpha[:, 16:] = 0
        arr = np.zeros((S, S, 4), np.uint8)
        arr[..., :3] = 255
        arr[..., 3] = alpha
        arr[:8, :16, :3] = 0  # luminance varies among the visible pixels: alpha multiplies it
        want[8:, :16] = True
        return _save(Image.fromarray(arr, "RGBA"), "PNG"), want
    if case == "alpha-only-black-strokes":
        # RGB black everywhere, alpha varies: the alpha is the mask (opaque = regenerate).
        alpha = np.zeros((S, S), np.uint8)
        alpha[8:24, 8:24] = 255
        alpha[8:24, 4:8] = 100  # a soft edge under half: keep
        want[8:24, 8:24] = True
        return _rgba(0, alpha), want
    if case == "alpha-only-grey-la":
        from PIL import Image as _Image

        alpha = np.zeros((S, S), np.uint8)
        alpha[:, :10] = 200
        want[:, :10] = True
        img = _Image.merge("LA", [_Image.new("L", (S, S), 60), _Image.fromarray(alpha)])
        return _save(img, "PNG"), want
    if case == "fully-transparent":
        return _rgba(255, np.zeros((S, S), np.uint8)), want
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["semi-transparent-white-on-opaque-black", "transparent-white-is-keep",
                                  "alpha-only-black-strokes", "alpha-only-grey-la", "fully-transparent"])
def test_alpha_rules(tmp_path, case):
    data, expected = alpha_case(case)
    fitted = fitted_mask(tmp_path, "m.png", data)
    assert all(np.array_equal(f, expected) for f in fitted), np.argwhere(fitted[0] != expected)[:5].tolist()
    report, out = prepare(tmp_path, {"s_start.mp4": clip(), "s_end.mp4": clip(), "s_mask.png": data})
    if not expected.any():
        assert report.triplets[0]["status"] == "skipped" and "all black" in report.triplets[0]["reason"]
        return
    assert report.ok, report.as_dict()
    prepared = read_mask(out / PreparedManifest.read(out).triplets[0].mask)
    assert all(np.array_equal(f, expected) for f in prepared)


TRANSPARENT = (slice(0, 8), slice(16, 24))  # where the alpha formats' frames are transparent (white: keep)

# (codec, container, extension, pixel format written, pixel format decoded, options)
VIDEO_CASES = [
    ("ffv1", "matroska", "mkv", "gray", "gray", {}),
    ("ffv1", "matroska", "mkv", "gray16le", "gray16le", {}),
    ("ffv1", "matroska", "mkv", "yuv420p10le", "yuv420p10le", {}),
    ("ffv1", "matroska", "mkv", "yuv444p16le", "yuv444p16le", {}),
    ("libx264", "mp4", "mp4", "yuv420p", "yuv420p", {"qp": "0"}),
    ("libx264", "mp4", "mp4", "yuvj420p", "yuvj420p", {"qp": "0"}),
    ("libx264", "mp4", "mp4", "yuv420p10le", "yuv420p10le", {"qp": "1", "profile": "high10"}),
    ("libvpx-vp9", "webm", "webm", "yuv420p", "yuv420p", {"lossless": "1"}),
    ("png", "mov", "mov", "rgb24", "rgb24", {}),
    ("png", "mov", "mov", "rgb48be", "rgb48be", {}),
    ("png", "mov", "mov", "gray16be", "gray16be", {}),
    # with alpha: the image rule (alpha multiplies luminance; transparent = keep)
    ("ffv1", "matroska", "mkv", "yuva420p", "yuva420p", {}),
    ("png", "mov", "mov", "rgba", "rgba", {}),
    ("prores_ks", "mov", "mov", "yuva444p10le", "yuva444p12le", {}),
    ("qtrle", "mov", "mov", "argb", "argb", {}),
    ("utvideo", "avi", "avi", "gbrap", "gbrap", {}),
    ("libvpx-vp9", "webm", "webm", "yuva420p", "yuv420p", {"lossless": "1"}),  # alpha read through libvpx
]


def mask_video(codec: str, container: str, pix_fmt: str, options: dict[str, str], frames: int = 12) -> bytes:
    """A mask video from 16-bit source frames (`levels16`; transparent at TRANSPARENT when the
    format has alpha), converted to `pix_fmt` by libswscale as any encoder's input."""
    import av

    try:
        av.codec.Codec(codec, "w")
    except Exception:
        pytest.skip(f"this FFmpeg has no {codec} encoder")
    has_alpha = any(c.is_alpha for c in av.VideoFormat(pix_fmt).components)
    if has_alpha:
        rgba = np.repeat(levels16()[..., None], 4, -1)
        rgba[..., 3] = 65535
        rgba[TRANSPARENT + (3,)] = 0
        source = av.VideoFrame.from_ndarray(rgba, format="rgba64le")
    else:
        source = av.VideoFrame.from_ndarray(levels16(), format="gray16le")
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=Fraction(24))
        stream.width = stream.height = S
        stream.pix_fmt = pix_fmt
        stream.options = options
        for i in range(frames):
            frame = source.reformat(format=pix_fmt)
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize(("codec", "container", "ext", "pix_fmt", "decoded", "options"), VIDEO_CASES,
                         ids=[f"{c[0]}-{c[3]}" for c in VIDEO_CASES])
def test_video_masks_of_every_pixel_format_and_depth(tmp_path, codec, container, ext, pix_fmt, decoded, options):
    import av

    data = mask_video(codec, container, pix_fmt, options)
    with av.open(io.BytesIO(data)) as c:  # the file really holds that format and bit depth
        assert next(c.decode(video=0)).format.name == decoded  # (FFmpeg's VP9 decoder drops alpha)
    expected = EXPECTED.copy()
    if any(comp.is_alpha for comp in av.VideoFormat(pix_fmt).components):
        expected[TRANSPARENT] = False
    fitted = fitted_mask(tmp_path, f"m.{ext}", data)
    for frame in fitted:
        assert np.array_equal(frame, expected), np.argwhere(frame != expected)[:5].tolist()
    prepared = prepared_mask(tmp_path, f"s_mask.{ext}", data)
    assert prepared.shape == (N, S, S)
    assert all(np.array_equal(frame, expected) for frame in prepared)


# ---------------------------------------------------------------------------------------------
# 2. and 3. Names: backslash separators, NFD names, files that pair with nothing

def _mask_png() -> bytes:
    from PIL import Image

    m = np.zeros((S, S), np.uint8)
    m[:, 16:] = 255
    return _save(Image.fromarray(m), "PNG")


def captions(out: Path) -> dict[str, str]:
    return {t.name: (out / t.caption).read_text(encoding="utf-8") for t in PreparedManifest.read(out).triplets}


def test_backslash_separators_are_folders(tmp_path):
    report, out = prepare(tmp_path, {"set\\": b"", "set\\win_start.mp4": clip(), "set\\win_end.mp4": clip(),
                                     "set\\win_mask.png": _mask_png(), "set\\win.txt": b"a red door"})
    assert report.ok and report.warnings == [] and report.ignored == [], report.as_dict()
    triplet = PreparedManifest.read(out).triplets[0]
    assert triplet.sources == {"reference": "set/win_start.mp4", "target": "set/win_end.mp4",
                               "mask": "set/win_mask.png", "caption": "set/win.txt"}
    assert captions(out) == {"win": "repl4ce a red door"}


@pytest.mark.parametrize(("entry", "rule"), [("C:\\x_start.mp4", "absolute path"), ("..\\..\\x.txt", "'..'"),
                                             ("\\x_start.mp4", "absolute path"),
                                             ("set\\..\\..\\x_end.mp4", "'..'")])
def test_backslash_paths_get_the_same_guards_and_are_named(tmp_path, entry, rule):
    report, _ = prepare(tmp_path, {"set\\win_start.mp4": clip(), "set\\win_end.mp4": clip(),
                                   "set\\win_mask.png": _mask_png(), entry: b"x"})
    assert not report.ok
    [error] = report.errors
    assert entry in error["message"] and rule in error["message"]


@pytest.mark.parametrize("media_form", ["NFD", "NFC"])
def test_decomposed_and_composed_names_pair(tmp_path, media_form):
    caption_form = "NFC" if media_form == "NFD" else "NFD"
    media, cap = unicodedata.normalize(media_form, "café"), unicodedata.normalize(caption_form, "café")
    assert media != cap
    report, out = prepare(tmp_path, {f"{media}_start.mp4": clip(), f"{media}_end.mp4": clip(),
                                     f"{media}_mask.png": _mask_png(), f"{cap}.txt": "un café noir".encode()})
    assert report.ok and report.ignored == [] and report.warnings == [], report.as_dict()
    assert captions(out) == {"café": "repl4ce un café noir"}


def test_files_that_pair_with_nothing_are_named_with_the_reason(tmp_path):
    entries = {"door_start.mp4": clip(), "door_end.mp4": clip(), "door_mask.png": _mask_png(),
               "Door.txt": b"a caption whose name differs in case", "lonely.txt": b"no triplet",
               "notes.pdf": b"%PDF", "x_start.png": _mask_png(), "clip-start.mp4": clip(),
               ".hidden/y_start.mp4": clip(), "__MACOSX/._door_start.mp4": b"x"}
    report, out = prepare(tmp_path, entries)
    assert report.ok, report.as_dict()
    warnings = {w["name"]: w["message"] for w in report.warnings}
    assert set(warnings) == {"Door.txt", "lonely.txt", "notes.pdf", "x_start.png", "clip-start.mp4",
                             ".hidden/y_start.mp4"}
    for name, message in warnings.items():
        assert message.startswith(name + ": ")
    assert "caption of no triplet" in warnings["lonely.txt"]
    assert "did you mean the triplet 'door'" in warnings["Door.txt"]
    assert "must be a video" in warnings["x_start.png"]
    assert "did you mean 'clip_start.mp4'" in warnings["clip-start.mp4"]
    assert "not part of a triplet" in warnings["notes.pdf"]
    assert "hidden" in warnings[".hidden/y_start.mp4"]
    assert set(report.ignored) == set(warnings) | {"__MACOSX/._door_start.mp4"}
    # A clip or mask alone is an incomplete triplet: an error naming it and what it lacks.
    report, _ = prepare(tmp_path, {**entries, "z_mask.png": _mask_png()})
    assert [e["name"] for e in report.errors] == ["z"] and "z_mask.png" in report.errors[0]["message"]


# ---------------------------------------------------------------------------------------------
# 4. Captions: BOM-detected UTF-8 / UTF-16 / UTF-32, else UTF-8

TEXT = "  un café\r\n über die Straße\t日本  "


@pytest.mark.parametrize(("bom", "encoding"), [
    (b"", "utf-8"), (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"), (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
], ids=["utf-8", "utf-8-bom", "utf-16-le-bom (Notepad 'Unicode')", "utf-16-be-bom", "utf-32-le-bom",
        "utf-32-be-bom"])
def test_captions_are_decoded_by_their_byte_order_mark(tmp_path, bom, encoding):
    report, out = prepare(tmp_path, {"s_start.mp4": clip(), "s_end.mp4": clip(), "s_mask.png": _mask_png(),
                                     "s.txt": bom + TEXT.encode(encoding)})
    assert report.ok, report.as_dict()
    assert captions(out) == {"s": "repl4ce un café über die Straße 日本"}


@pytest.mark.parametrize(("data", "words"), [
    ("un café".encode("latin-1"), "not UTF-8 text"),
    ("a red door".encode("utf-16-le"), "UTF-16 without a byte-order mark"),
    (codecs.BOM_UTF16_LE + b"a\x00\x00\xd8", "not UTF-16 text"),  # a lone surrogate
], ids=["latin-1", "utf-16-without-bom", "broken-utf-16"])
def test_undecodable_captions_are_errors_naming_the_file(tmp_path, data, words):
    report, _ = prepare(tmp_path, {"set/s_start.mp4": clip(), "set/s_end.mp4": clip(),
                                   "set/s_mask.png": _mask_png(), "set/s.txt": data})
    assert not report.ok
    message = report.errors[0]["message"]
    assert message.startswith("set/s.txt: caption") and words in message, message


# ---------------------------------------------------------------------------------------------
# 5. Broken videos: what is wrong, in the user's terms, naming the file; never an errno

def _encode_file(path: Path, container: str, codec: str = "libx264", frames: int = 24,
                 options: dict[str, str] | None = None) -> bytes:
    """A clip of random frames (so packets are not tiny) written to a real file (faststart needs one)."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format=container, options=options or {}) as out:
        stream = out.add_stream(codec, rate=Fraction(24))
        stream.width = stream.height = S
        stream.pix_fmt = "rgb24" if codec == "png" else "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (S, S, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path.read_bytes()


def _packets(data: bytes) -> list[tuple[int, int]]:
    import av

    with av.open(io.BytesIO(data)) as c:
        return [(p.pos, p.size) for p in c.demux(video=0) if p.size]


def broken_video(case: str, tmp: Path) -> tuple[bytes, list[str]]:
    """(bytes, words the message must hold) of a broken `case`."""
    import av

    if case == "truncated-mp4":  # the index (moov) is written last: a cut file has none
        data = video(solid_frames(48, S, S))
        return data[: len(data) * 6 // 10], ["is cut off (truncated)", "'mdat' box"]
    faststart = _encode_file(tmp / "fast.mp4", "mp4", options={"movflags": "faststart"})
    if case == "truncated-faststart-mp4-index-only":  # was "[Errno 1] Operation not permitted"
        return faststart[: faststart.index(b"mdat") + 64], ["is cut off (truncated)", "no frame could be decoded"]
    if case == "truncated-faststart-mp4-too-few-frames":
        pos, size = _packets(faststart)[4]
        return faststart[: pos + size], ["is cut off (truncated)", "frames at 24 fps remain, 9 needed"]
    if case == "truncated-mkv":
        data = _encode_file(tmp / "c.mkv", "matroska")
        pos, size = _packets(data)[3]
        return data[: pos + size + 5], ["is cut off (truncated)", "Matroska segment"]
    if case == "damaged-mid-stream":  # a corrupt frame after 5 good ones
        data = bytearray(_encode_file(tmp / "p.mov", "mov", codec="png"))
        pos, size = _packets(bytes(data))[5]
        data[pos + 8: pos + size - 4] = b"\0" * (size - 12)
        return bytes(data), ["is damaged", "5 frames decoded (up to t=0.17 s) before the error"]
    if case == "zip-named-mp4":
        return write_zip(tmp / "inner.zip", {"a.txt": b"hello" * 100}).read_bytes(), ["is not a video: it is a zip"]
    if case == "html-page":
        return b"<!DOCTYPE html><html><body>Sign in to download</body></html>", ["web page"]
    if case == "empty":
        return b"", ["is empty (0 bytes)"]
    if case == "garbage":
        return np.random.default_rng(1).integers(0, 255, 4096, np.uint8).tobytes(), ["not a video file"]
    if case == "audio-only":
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as out:
            stream = out.add_stream("aac", rate=48000)
            stream.layout = "mono"
            for k in range(10):
                frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 48000, k * 1024
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return buf.getvalue(), ["has no video stream (it has only audio)"]
    if case == "unknown-codec":
        data = bytearray(video(solid_frames(12, S, S)))
        at = data.index(b"avc1", data.index(b"moov"))
        data[at:at + 4] = b"zzzz"
        return bytes(data), ["video codec this FFmpeg cannot decode", "'zzzz'"]
    raise AssertionError(case)


BROKEN = ["truncated-mp4", "truncated-faststart-mp4-index-only", "truncated-faststart-mp4-too-few-frames",
          "truncated-mkv", "damaged-mid-stream", "zip-named-mp4", "html-page", "empty", "garbage", "audio-only",
          "unknown-codec"]


@pytest.mark.parametrize("case", BROKEN)
def test_broken_videos_are_named_with_what_is_wrong(tmp_path, case):
    data, words = broken_video(case, tmp_path)
    ext = {"truncated-mkv": "mkv", "damaged-mid-stream": "mov"}.get(case, "mp4")
    report, _ = prepare(tmp_path, {f"clips/s_start.{ext}": data, "clips/s_end.mp4": clip(),
                                   "clips/s_mask.png": _mask_png()})
    assert not report.ok
    [error] = report.errors
    message = error["message"]
    assert message.startswith(f"clips/s_start.{ext}: "), message
    for w in words:
        assert w in message, message
    assert "Errno" not in message and "Operation not permitted" not in message


def test_a_cut_off_clip_with_enough_frames_is_used_and_named(tmp_path):
    data = _encode_file(tmp_path / "fast.mp4", "mp4", options={"movflags": "faststart"})
    pos, size = _packets(data)[15]
    report, _ = prepare(tmp_path, {"s_start.mp4": data[: pos + size], "s_end.mp4": clip(), "s_mask.png": _mask_png()})
    assert report.ok and report.usable == 1, report.as_dict()
    [warning] = report.warnings
    assert warning["name"] == "s_start.mp4" and "is cut off (truncated)" in warning["message"]


def test_a_cut_off_mask_video_is_not_held_over_its_missing_part(tmp_path):
    data = _encode_file(tmp_path / "m.mkv", "matroska")
    pos, size = _packets(data)[3]
    report, _ = prepare(tmp_path, {"s_start.mp4": clip(), "s_end.mp4": clip(), "s_mask.mkv": data[: pos + size + 5]})
    assert not report.ok
    message = report.errors[0]["message"]
    assert message.startswith("s_mask.mkv: is cut off (truncated)") and "needed" in message, message


@pytest.mark.parametrize(("case", "words"), [("truncated-png", "is cut off (truncated)"),
                                             ("video-named-png", "is not an image: it is a video"),
                                             ("html-named-png", "web page"), ("empty", "is empty (0 bytes)")])
def test_broken_image_masks_are_named_with_what_is_wrong(tmp_path, case, words):
    if case == "truncated-png":
        from PIL import Image

        noisy = np.random.default_rng(2).integers(0, 255, (S, S), np.uint8)
        full = _save(Image.fromarray(noisy), "PNG")
        data = full[: len(full) // 2]
    else:
        data = {"video-named-png": clip(), "html-named-png": b"<html><body>Not found</body></html>",
                "empty": b""}[case]
    path = tmp_path / "mask.png"
    path.write_bytes(data)
    with pytest.raises(DatasetError) as info:
        fit_mask(path, S, S, 3, 24.0, "mask.png")
    assert str(info.value).startswith("mask.png: ") and words in str(info.value)
    assert "Errno" not in str(info.value)
    report, _ = prepare(tmp_path, {"s_start.mp4": clip(), "s_end.mp4": clip(), "s_mask.png": data})
    assert not report.ok and report.errors[0]["message"].startswith("s_mask.png: ")
    assert words in report.errors[0]["message"]
