"""Document pages as images, with their text: PDFs, image files, folders and PIL images.

ColPali-family models embed a page *image*; this module turns what a user has into :class:`Page` objects
(an RGB image, the page's extracted text, metadata and a stable id), framework-free. Extra ``colpali``
(pypdfium2, pillow); both are imported when first used, so importing this module loads neither.

What was chosen, and why:

* **PDFs are rendered by pypdfium2** (PDFium, Chrome's renderer, shipped as wheels with no system
  dependency — unlike pdf2image, which needs poppler installed, or PyMuPDF, which is AGPL). The same
  library extracts each page's text from the text layer (``PdfTextPage.get_text_bounded``, full Unicode),
  for display, citations and hybrid text + image search; a scan without a text layer gives ``""`` (no
  OCR). Form fields are drawn (``init_forms``), so filled forms show their values.
* **Images are read by Pillow**, restricted to the formats ragplug accepts (PNG, JPEG, WebP, TIFF, BMP,
  GIF), so a file with a misleading extension never reaches another decoder (EPS would run Ghostscript).
  EXIF orientation is applied (a phone photo of a page stands upright); transparency is composited on
  white (a transparent PNG page does not turn black); a GIF or WebP animation gives its first frame; a
  multi-page TIFF (scans, faxes) gives one page per frame, like a PDF.
* **Resolution: 144 dpi** (:data:`DEFAULT_DPI`, a scale of exactly 2 on PDF's 72-unit inch). The models
  resize anyway — PaliGemma-based ColPali to 448 × 448, ColQwen2 to at most ~0.6 Mpx by default,
  ColIdefics3 / ColSmol to a longest side of 1,456 px — and a US Letter page at 144 dpi is
  1,224 × 1,584 px (1.9 Mpx), at or above every one of them; more only costs memory and time.
* **Lazy iteration**: :func:`pdf_pages`, :func:`image_pages` and :class:`PageSet` render one page when it
  is asked for, so a 500-page PDF never holds 500 bitmaps; errors in a file are raised when iteration
  reaches it (argument errors, missing files and empty folders are raised at the call).
* **Huge pages are refused, not downscaled** (:data:`MAX_PIXELS`, 64 Mpx by default; ``max_pixels=None``
  lifts it). The rendered size is computed from the page's dimensions *before* PDFium allocates the
  bitmap, and an image's size is read from its header before its pixels are decoded; the error names the
  page's size and the highest dpi that fits. Refusing rather than shrinking: a page that large (a
  278-inch sheet, a 400 Mpx scan) squeezed to a model's input size becomes unreadable to the model, and
  the user should decide knowingly (a lower ``dpi`` for that document, a higher ``max_pixels``, or
  leaving it out); an image could only be shrunk after decoding it whole — the very allocation the
  limit is there to avoid. 64 Mpx (192 MB as RGB) admits A0 drawings at 144 dpi (32 Mpx) and 48–50 Mpx
  phone photos, and sits below Pillow's decompression-bomb warning (89.5 Mpx), so ragplug's message comes
  first; Pillow's own guard stays in place behind it (``Image.MAX_IMAGE_PIXELS``).

Every page's metadata has ``source`` (the file's path, ``/``-separated, as given or as found under a
given folder), ``page`` (1-based), ``page_count``, ``image`` (a reference :func:`page_image` renders
again: ``"<path>#page=<n>"`` for a PDF page or a TIFF frame, the path for an image file, ``None`` for an
in-memory image), ``width`` and ``height`` (pixels); a PDF page also has ``dpi`` (and ``title`` when the
document records one). Ids are stable across runs: ``"<source>#p<page>"`` for PDF pages and TIFF
frames, the path for an image file, ``"image:<content digest>"`` for an in-memory image without a file.

Every problem with an input — a missing file, an encrypted PDF without or with a wrong password, a
damaged or zero-page PDF, a page above ``max_pixels``, a file that is neither a PDF nor an image, a
folder with nothing to read — is an :class:`~ragplug.errors.InvalidInputError` naming the file (and the
page). PDFium is not thread-safe: use these functions from one thread at a time.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ragplug._extras import require
from ragplug.errors import InvalidInputError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "CHAT_IMAGE_SIDE",
    "DEFAULT_DPI",
    "IMAGE_EXTENSIONS",
    "IMAGE_KEY",
    "MAX_PIXELS",
    "PDF_EXTENSIONS",
    "Page",
    "PageSet",
    "image_pages",
    "load_pages",
    "page_image",
    "page_image_base64",
    "pdf_pages",
    "thumbnail",
    "to_base64_png",
    "to_data_url",
]

logger = logging.getLogger(__name__)

#: Rendering resolution of PDF pages, in dots per inch (see the module docstring).
DEFAULT_DPI = 144
#: The metadata key of a page's image as base64 PNG: kept with an index (byaldi's stored pages) or added to
#: results on request (``include_images=True``).
IMAGE_KEY = "image_base64"
#: The longest side of page images handed to chat models (a multimodal model resizes them anyway).
CHAT_IMAGE_SIDE = 1024
#: The most pixels a page may have once rendered or decoded (``max_pixels=None`` lifts the limit).
MAX_PIXELS = 64_000_000
PDF_EXTENSIONS = frozenset({".pdf"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
#: The Pillow decoders tried on an image file (MPO: the JPEG variant many cameras write).
_PIL_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP", "GIF")
_REFERENCE = re.compile(r"^(?P<path>.+)#page=(?P<page>[1-9][0-9]*)$")

#: PDFium's load errors (``FPDF_ERR_*``), as the end of a sentence about the file.
_PDF_OPEN_ERRORS = {
    1: "PDFium could not open it (unknown error)",
    2: "the file cannot be opened or read",
    3: "it is not a PDF or it is damaged",
    5: "it is encrypted with a security handler PDFium does not support (certificate or DRM encryption)",
    6: "its page tree is damaged",
}


def _pdfium() -> ModuleType:
    return require("pypdfium2", "colpali")


def _pil() -> ModuleType:
    return require("PIL.Image", "colpali")


@dataclass(frozen=True)
class Page:
    """One page: its stable ``id``, its ``image`` (RGB), its extracted ``text`` (``""`` when it has none)
    and its ``metadata`` (``source``, ``page``, ``page_count``, ``image``, ``width``, ``height``; see the
    module docstring)."""

    id: str
    image: PILImage = field(repr=False)
    text: str = field(repr=False)
    metadata: dict[str, Any]


# ----------------------------------------------------------------------------------------- checks


def _check_dpi(dpi: float) -> float:
    if isinstance(dpi, bool) or not isinstance(dpi, int | float) or not math.isfinite(dpi) or dpi <= 0:
        msg = f"dpi must be a positive number, got {dpi!r}"
        raise InvalidInputError(msg)
    return float(dpi)


def _check_max_pixels(max_pixels: int | None) -> int | None:
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        msg = f"max_pixels must be a positive integer or None, got {max_pixels!r}"
        raise InvalidInputError(msg)
    return max_pixels


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        msg = f"on_error must be 'raise' or 'skip', got {on_error!r}"
        raise InvalidInputError(msg)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} Mpx"


def _fitting_dpi(dpi: float, pixels: int, max_pixels: int) -> int:
    """The highest whole dpi at which a page rendered at ``dpi`` into ``pixels`` has at most ``max_pixels``."""
    fit = math.floor(dpi * math.sqrt(max_pixels / pixels))
    return max(fit, 0)


# ------------------------------------------------------------------------------------------- PDFs


def _pdf_open_error(path: Path, where: str, password: str | None, err: Exception) -> InvalidInputError:
    """Why ``path`` did not open. pypdfium2 reports a zero-page PDF as a load failure with PDFium's last
    error code, which is stale then (it may be a password error of an earlier file), so the file is opened
    once more with the raw API: a document that opens is a zero-page one, else the fresh code says why."""
    raw = _pdfium().raw
    pw = None if password is None else password.encode() + b"\0"
    doc = raw.FPDF_LoadDocument(os.fsencode(path) + b"\0", pw)
    if doc:
        count = raw.FPDF_GetPageCount(doc)
        raw.FPDF_CloseDocument(doc)
        if count < 1:
            return InvalidInputError(f"{where}: the PDF has no pages")
        return InvalidInputError(f"{where}: cannot open the PDF ({err})")
    code = raw.FPDF_GetLastError()
    if code == raw.FPDF_ERR_PASSWORD:
        if password is None:
            return InvalidInputError(f"{where}: the PDF is encrypted; pass its password (password=...)")
        return InvalidInputError(f"{where}: the PDF's password is wrong")
    reason = _PDF_OPEN_ERRORS.get(code, f"PDFium error code {code}")
    return InvalidInputError(f"{where}: cannot open the PDF: {reason}")


def _open_pdf(path: Path, where: str, password: str | None) -> Any:
    pdfium = _pdfium()
    if not path.is_file():
        raise _not_a_file(path, where)
    try:
        pdf = pdfium.PdfDocument(path, password=password)
    except pdfium.PdfiumError as err:
        raise _pdf_open_error(path, where, password, err) from err
    except OSError as err:
        msg = f"{where}: cannot read the file: {err.strerror or err}"
        raise InvalidInputError(msg) from err
    pdf.init_forms()  # before any page is loaded, so filled form fields are drawn
    return pdf


def _not_a_file(path: Path, where: str) -> InvalidInputError:
    if path.exists():
        return InvalidInputError(f"{where} is not a file")
    return InvalidInputError(f"{where} does not exist")


def _render_pdf_page(
    pdf: Any, index: int, where: str, dpi: float, max_pixels: int | None, *, with_text: bool
) -> tuple[PILImage, str]:
    """Page ``index`` of an open document as an RGB image (its size checked before rendering) and its
    text (``""`` unless ``with_text``)."""
    pdfium = _pdfium()
    here = f"{where}, page {index + 1}"
    try:
        page = pdf[index]
    except pdfium.PdfiumError as err:
        msg = f"{here}: cannot load the page ({err})"
        raise InvalidInputError(msg) from err
    try:
        width_pt, height_pt = page.get_size()
        scale = dpi / 72
        width, height = math.ceil(width_pt * scale), math.ceil(height_pt * scale)
        size = f"{width_pt:g} × {height_pt:g} pt"
        pixels = width * height
        if max_pixels is not None and pixels > max_pixels:
            fit = _fitting_dpi(dpi, pixels, max_pixels)
            hint = f"render it at dpi={fit} or lower" if fit >= 1 else "no dpi makes it fit"
            msg = (
                f"{here}: the page is {size}, {width} × {height} px ({_megapixels(pixels)}) at {dpi:g} dpi, "
                f"above max_pixels={max_pixels} ({_megapixels(max_pixels)}); {hint}, or raise max_pixels"
            )
            raise InvalidInputError(msg)
        try:
            bitmap = page.render(scale=scale)
        except (pdfium.PdfiumError, MemoryError) as err:
            msg = f"{here}: cannot render the page at {dpi:g} dpi ({width} × {height} px): {err}"
            raise InvalidInputError(msg) from err
        try:
            image = bitmap.to_pil()  # a copy: PIL shares no memory with a BGR bitmap
        finally:
            bitmap.close()
        if image.mode != "RGB":
            image = image.convert("RGB")
        text = _page_text(page, here) if with_text else ""
    finally:
        page.close()
    return image, text


def _page_text(page: Any, here: str) -> str:
    """The page's text layer, newlines normalised; a broken text layer is logged and read as ``""``
    (the image is what the model embeds)."""
    pdfium = _pdfium()
    try:
        textpage = page.get_textpage()
        try:
            text = str(textpage.get_text_bounded())
        finally:
            textpage.close()
    except pdfium.PdfiumError as err:
        logger.warning("%s: cannot extract the text (%s); the page gets no text", here, err)
        return ""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "").strip()


def _pdf_pages(path: Path, source: str, dpi: float, max_pixels: int | None, password: str | None) -> Iterator[Page]:
    pdf = _open_pdf(path, source, password)
    try:
        count = len(pdf)
        title = str(pdf.get_metadata_value("Title") or "").strip()
        for index in range(count):
            image, text = _render_pdf_page(pdf, index, source, dpi, max_pixels, with_text=True)
            number = index + 1
            metadata: dict[str, Any] = {
                "source": source,
                "page": number,
                "page_count": count,
                "image": f"{source}#page={number}",
                "width": image.width,
                "height": image.height,
                "dpi": dpi if dpi != int(dpi) else int(dpi),
            }
            if title:
                metadata["title"] = title
            yield Page(f"{source}#p{number}", image, text, metadata)
    finally:
        pdf.close()


def pdf_pages(
    path: str | os.PathLike[str],
    *,
    dpi: float = DEFAULT_DPI,
    max_pixels: int | None = MAX_PIXELS,
    password: str | None = None,
) -> Iterator[Page]:
    """The pages of a PDF, rendered one at a time at ``dpi`` as they are iterated, each with its text.

    ``max_pixels`` refuses a page whose rendering would be larger, before allocating it; ``password``
    opens an encrypted PDF. Arguments and the file's existence are checked at the call; problems inside
    the file raise :class:`~ragplug.errors.InvalidInputError` when iteration reaches them.
    """
    dpi = _check_dpi(dpi)
    max_pixels = _check_max_pixels(max_pixels)
    file = Path(path)
    source = file.as_posix()
    if not file.is_file():
        raise _not_a_file(file, source)
    return _pdf_pages(file, source, dpi, max_pixels, password)


def _pdf_page_count(path: Path, source: str, password: str | None) -> int:
    pdf = _open_pdf(path, source, password)
    try:
        return len(pdf)
    finally:
        pdf.close()


# ----------------------------------------------------------------------------------------- images


def _check_image_size(width: int, height: int, here: str, max_pixels: int | None) -> None:
    pixels = width * height
    if max_pixels is not None and pixels > max_pixels:
        msg = (
            f"{here}: the image is {width} × {height} px ({_megapixels(pixels)}), above "
            f"max_pixels={max_pixels} ({_megapixels(max_pixels)}); downscale it or raise max_pixels"
        )
        raise InvalidInputError(msg)


def _to_rgb(image: PILImage) -> PILImage:
    """An RGB copy of ``image``: transparency composited on white, 16-bit and float grey scaled to 8 bits."""
    Image = _pil()
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        values = np.array(image, dtype=np.float32)  # a writable copy
        top = float(values.max()) if values.size else 0.0
        if image.mode == "F" and top <= 1.0:
            values *= 255
        elif top > 255:
            values /= 257  # 16-bit range onto 8 bits
        grey = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
        return grey.convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _open_image(path: Path, where: str) -> Any:
    """``path`` opened by Pillow (header read, pixels not decoded), or a clear error."""
    Image = _pil()
    if not path.is_file():
        raise _not_a_file(path, where)
    Image.init()
    formats = [fmt for fmt in _PIL_FORMATS if fmt in Image.OPEN]  # Pillow 13 reads MPO as JPEG
    try:
        return Image.open(path, formats=formats)
    except Image.DecompressionBombError as err:
        msg = f"{where}: the image is too large to decode safely ({err}); downscale it"
        raise InvalidInputError(msg) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        kinds = ", ".join(fmt for fmt in _PIL_FORMATS if fmt != "MPO")
        msg = f"{where}: not an image ragplug reads ({kinds}): {err}"
        raise InvalidInputError(msg) from err


def _frames(image: Any) -> int:
    """How many pages an opened image file holds: the frames of a TIFF, 1 for anything else (a GIF or
    WebP animation is one picture, read as its first frame)."""
    return int(getattr(image, "n_frames", 1)) if image.format == "TIFF" else 1


def _decode_frame(image: Any, index: int, here: str, max_pixels: int | None) -> PILImage:
    """Frame ``index`` of an opened image file as RGB, its size checked before decoding."""
    ImageOps = require("PIL.ImageOps", "colpali")
    try:
        if index:
            image.seek(index)
        _check_image_size(image.width, image.height, here, max_pixels)
        image.load()
        upright = ImageOps.exif_transpose(image)  # a new image, detached from the file
        return upright if upright.mode == "RGB" else _to_rgb(upright)
    except InvalidInputError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        msg = f"{here}: cannot decode the image: {err}"
        raise InvalidInputError(msg) from err


def _image_file_pages(path: Path, source: str, max_pixels: int | None) -> Iterator[Page]:
    with _open_image(path, source) as opened:
        count = _frames(opened)
        for index in range(count):
            number = index + 1
            here = source if count == 1 else f"{source}, page {number}"
            image = _decode_frame(opened, index, here, max_pixels)
            reference = source if count == 1 else f"{source}#page={number}"
            page_id = source if count == 1 else f"{source}#p{number}"
            metadata = {
                "source": source,
                "page": number,
                "page_count": count,
                "image": reference,
                "width": image.width,
                "height": image.height,
            }
            yield Page(page_id, image, "", metadata)


def _memory_source(image: PILImage) -> tuple[str, str | None]:
    """The ``source`` and image reference of an in-memory image: the file Pillow opened it from, else a
    digest of its pixels (stable across runs) and no reference."""
    filename = str(getattr(image, "filename", "") or "")
    if filename:
        return Path(filename).as_posix(), Path(filename).as_posix()
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{image.mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return f"image:{digest.hexdigest()}", None


def _memory_image_page(image: PILImage, max_pixels: int | None, named: tuple[str, str | None] | None = None) -> Page:
    source, reference = named if named is not None else _memory_source(image)
    _check_image_size(image.width, image.height, source, max_pixels)
    rgb = image if image.mode == "RGB" else _to_rgb(image)
    metadata = {
        "source": source,
        "page": 1,
        "page_count": 1,
        "image": reference,
        "width": rgb.width,
        "height": rgb.height,
    }
    return Page(source, rgb, "", metadata)


def _image_source_kind(item: object) -> Literal["path", "image"]:
    if isinstance(item, str | os.PathLike):
        return "path"
    if isinstance(item, _pil().Image):
        return "image"
    msg = f"expected a file path or a PIL image, got {type(item).__name__}"
    raise InvalidInputError(msg)


def image_pages(
    images: str | os.PathLike[str] | PILImage | Iterable[str | os.PathLike[str] | PILImage],
    *,
    max_pixels: int | None = MAX_PIXELS,
) -> Iterator[Page]:
    """Pages from image files (PNG, JPEG, WebP, TIFF, BMP, GIF) and PIL images, decoded one at a time
    as they are iterated. A PIL image is used as it is when already RGB (not copied), else converted;
    its id is its file's path when Pillow opened it from one, else a digest of its pixels. A file with
    another extension (a PDF: use :func:`pdf_pages` or :func:`load_pages`) is refused at the call."""
    max_pixels = _check_max_pixels(max_pixels)
    single = isinstance(images, str | os.PathLike) or _pil_image(images)
    items: list[Any] = [images] if single else list(images)  # type: ignore[arg-type]
    checked: list[tuple[Literal["path", "image"], Any]] = []
    for item in items:
        kind = _image_source_kind(item)
        if kind == "path":
            file = Path(item)
            if file.suffix.lower() not in IMAGE_EXTENSIONS:
                raise _not_readable(file, IMAGE_EXTENSIONS)
            if not file.is_file():
                raise _not_a_file(file, file.as_posix())
        checked.append((kind, item))
    return _image_pages(checked, max_pixels)


def _pil_image(value: object) -> bool:
    return isinstance(value, _pil().Image)


def _image_pages(items: list[tuple[Literal["path", "image"], Any]], max_pixels: int | None) -> Iterator[Page]:
    for kind, item in items:
        if kind == "image":
            yield _memory_image_page(item, max_pixels)
        else:
            file = Path(item)
            yield from _image_file_pages(file, file.as_posix(), max_pixels)


def _not_readable(path: Path, accepted: Iterable[str]) -> InvalidInputError:
    kind = f"{path.suffix!r} files" if path.suffix else "files without an extension"
    return InvalidInputError(f"{path.as_posix()}: cannot read {kind}; ragplug reads {', '.join(sorted(accepted))}")


# -------------------------------------------------------------------------------- files and folders


@dataclass(frozen=True)
class _Entry:
    kind: Literal["pdf", "image", "memory"]
    source: str
    item: Any  # a Path, or a PIL image for "memory"
    reference: str | None = None  # a "memory" image's file, if Pillow opened it from one


@dataclass
class PageSet:
    """What :func:`load_pages` found, iterated lazily: ``for page in pages`` renders one page at a time,
    in the order of the sources (a folder's files sorted by path), and can be repeated.

    ``files`` lists the PDFs and images found (their ``source``); ``skipped`` counts, by extension, the
    files inside folders that are neither (``""`` for files without an extension); with
    ``on_error="skip"``, ``failed`` lists the files (and pages) that could not be read during the last
    iteration, as ``(source, message)``, and iteration goes on with the next file."""

    files: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    failed: list[tuple[str, str]] = field(default_factory=list)
    dpi: float = DEFAULT_DPI
    max_pixels: int | None = MAX_PIXELS
    password: str | None = field(default=None, repr=False)
    on_error: Literal["raise", "skip"] = "raise"
    _entries: list[_Entry] = field(default_factory=list, repr=False)

    def __iter__(self) -> Iterator[Page]:
        self.failed = []
        for entry in self._entries:
            try:
                if entry.kind == "pdf":
                    yield from _pdf_pages(entry.item, entry.source, self.dpi, self.max_pixels, self.password)
                elif entry.kind == "image":
                    yield from _image_file_pages(entry.item, entry.source, self.max_pixels)
                else:
                    yield _memory_image_page(entry.item, self.max_pixels, (entry.source, entry.reference))
            except InvalidInputError as err:
                if self.on_error == "raise":
                    raise
                logger.warning("left out: %s", err)
                self.failed.append((entry.source, str(err)))

    def count(self) -> int:
        """How many pages iteration will give (PDFs opened, nothing rendered; for a progress bar). With
        ``on_error="skip"``, a file that cannot be opened counts 0 pages."""
        total = 0
        for entry in self._entries:
            try:
                if entry.kind == "pdf":
                    total += _pdf_page_count(entry.item, entry.source, self.password)
                elif entry.kind == "image":
                    with _open_image(entry.item, entry.source) as opened:
                        total += _frames(opened)
                else:
                    total += 1
            except InvalidInputError:
                if self.on_error == "raise":
                    raise
        return total

    def __repr__(self) -> str:
        return f"PageSet({self.summary()})"

    def skipped_summary(self) -> str:
        """``"2 .docx, 1 without extension"``: the skipped files by extension, most frequent first."""
        counts = sorted(self.skipped.items(), key=lambda pair: (-pair[1], pair[0]))
        return ", ".join(f"{n} {ext or 'without extension'}" for ext, n in counts)

    def summary(self) -> str:
        """One line: what was found, skipped and (after an iteration) failed."""
        kinds: Counter[str] = Counter(entry.kind for entry in self._entries)
        names: dict[str, tuple[str, str]] = {
            "pdf": ("PDF", "PDFs"),
            "image": ("image file", "image files"),
            "memory": ("PIL image", "PIL images"),
        }
        found = [f"{kinds[kind]} {names[kind][kinds[kind] != 1]}" for kind in names if kinds[kind]]
        line = ", ".join(found) or "nothing"
        if self.skipped:
            line += f"; skipped {self.skipped_summary()}"
        if self.failed:
            line += f"; failed {len(self.failed)}: " + ", ".join(source for source, _ in self.failed)
        return line


def _classify(path: Path) -> Literal["pdf", "image"] | None:
    ext = path.suffix.lower()
    if ext in PDF_EXTENSIONS:
        return "pdf"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


def _walk(folder: Path, given: str, pages: PageSet) -> list[_Entry]:
    """The PDFs and images under ``folder``, sorted by path, hidden files and folders skipped; other files
    counted in ``pages.skipped``."""
    found: list[tuple[Path, Literal["pdf", "image"]]] = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            path = Path(top, name)
            kind = _classify(path)
            if kind is None:
                pages.skipped[path.suffix.lower()] += 1
                logger.debug("skipped %s: neither a PDF nor an image", path)
            else:
                found.append((path.relative_to(folder), kind))
    base = Path(given)
    return [_Entry(kind, (base / rel).as_posix(), folder / rel) for rel, kind in sorted(found)]


def load_pages(
    *sources: str | os.PathLike[str] | PILImage,
    dpi: float = DEFAULT_DPI,
    max_pixels: int | None = MAX_PIXELS,
    password: str | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> PageSet:
    """The pages of files (PDFs and images), folders (walked recursively in sorted order, hidden files and
    folders skipped) and PIL images, as a lazily iterated :class:`PageSet`.

    Checked at the call: the arguments, that every path exists, that an explicitly named file is a PDF or
    an image (by extension), and that every folder holds at least one; other files inside folders are
    counted in :attr:`PageSet.skipped`. A file found twice (named, and inside a named folder) is read
    once. ``password`` is tried on every encrypted PDF. ``on_error="skip"`` records a file that cannot be
    read (encrypted, damaged, too large, ...) in :attr:`PageSet.failed`, logs a warning and goes on;
    ``"raise"`` (the default) raises :class:`~ragplug.errors.InvalidInputError` naming it.
    """
    _check_on_error(on_error)
    pages = PageSet(dpi=_check_dpi(dpi), max_pixels=_check_max_pixels(max_pixels), password=password, on_error=on_error)
    if not sources:
        msg = "no sources given: pass PDF or image files, folders, or PIL images"
        raise InvalidInputError(msg)
    seen: set[Path] = set()
    accepted = PDF_EXTENSIONS | IMAGE_EXTENSIONS
    for given in sources:
        if _image_source_kind(given) == "image":
            source, reference = _memory_source(given)  # type: ignore[arg-type]
            pages._entries.append(_Entry("memory", source, given, reference))
            continue
        path = Path(given)  # type: ignore[arg-type]
        if path.is_dir():
            skipped_before = sum(pages.skipped.values())
            entries = _walk(path, path.as_posix(), pages)
            if not entries:
                held = sum(pages.skipped.values()) - skipped_before
                what = f"only {held} other file{'s' if held != 1 else ''}" if held else "no files"
                msg = f"{path.as_posix()}: no PDF or image to read in this folder ({what}); ragplug reads " + ", ".join(
                    sorted(accepted)
                )
                raise InvalidInputError(msg)
        elif path.is_file():
            kind = _classify(path)
            if kind is None:
                raise _not_readable(path, accepted)
            entries = [_Entry(kind, path.as_posix(), path)]
        else:
            raise _not_a_file(path, path.as_posix())
        for entry in entries:
            key = entry.item.resolve()
            if key not in seen:
                seen.add(key)
                pages._entries.append(entry)
                pages.files.append(entry.source)
    return pages


# ---------------------------------------------------------------------------- images on request


def _parse_reference(reference: str | os.PathLike[str], root: str | os.PathLike[str] | None) -> tuple[Path, int | None]:
    text = os.fspath(reference)
    base = Path(root) if root is not None else None

    def located(name: str) -> Path:
        path = Path(name)
        return base / path if base is not None and not path.is_absolute() else path

    whole = located(text)
    if whole.is_file():
        return whole, None
    match = _REFERENCE.match(text)
    if match:
        return located(match["path"]), int(match["page"])
    return whole, None


def page_image(
    reference: str | os.PathLike[str] | Mapping[str, Any],
    *,
    dpi: float | None = None,
    max_pixels: int | None = MAX_PIXELS,
    password: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> PILImage:
    """The image of a page again, from its reference (``metadata["image"]``: ``"<path>#page=<n>"`` or an
    image file's path) or from its metadata. A PDF page is rendered at ``dpi`` (default: the ``dpi`` in
    the metadata, else :data:`DEFAULT_DPI`); a relative path is taken from ``root`` (default: the current
    folder). For the page image "on request" in the framework plugins; see :func:`to_data_url`."""
    if isinstance(reference, Mapping):
        metadata = reference
        reference = metadata.get("image")  # type: ignore[assignment]
        if reference is None:
            where = metadata.get("source", "the page")
            msg = (
                f"{where}: no image reference in the metadata (an in-memory image has none); "
                "keep the image, or save it to a file and index the file"
            )
            raise InvalidInputError(msg)
        if dpi is None and metadata.get("dpi") is not None:
            dpi = metadata["dpi"]
    if not isinstance(reference, str | os.PathLike):
        msg = f"expected a page reference (str) or page metadata, got {type(reference).__name__}"
        raise InvalidInputError(msg)
    resolved_dpi = _check_dpi(DEFAULT_DPI if dpi is None else dpi)
    max_pixels = _check_max_pixels(max_pixels)
    path, number = _parse_reference(reference, root)
    where = path.as_posix()
    kind = _classify(path)
    if kind is None:
        raise _not_readable(path, PDF_EXTENSIONS | IMAGE_EXTENSIONS)
    if kind == "pdf":
        if number is None:
            msg = f"{os.fspath(reference)}: a PDF page reference needs the page, as '<path>#page=<n>'"
            raise InvalidInputError(msg)
        pdf = _open_pdf(path, where, password)
        try:
            if number > len(pdf):
                msg = f"{where}: no page {number}; the PDF has {len(pdf)}"
                raise InvalidInputError(msg)
            image, _ = _render_pdf_page(pdf, number - 1, where, resolved_dpi, max_pixels, with_text=False)
        finally:
            pdf.close()
        return image
    with _open_image(path, where) as opened:
        count = _frames(opened)
        index = 0 if number is None else number - 1
        if index >= count:
            msg = f"{where}: no page {number}; the image has {count}"
            raise InvalidInputError(msg)
        here = where if count == 1 else f"{where}, page {index + 1}"
        return _decode_frame(opened, index, here, max_pixels)


def _check_side(max_side: int | None) -> None:
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        msg = f"max_side must be a positive integer or None, got {max_side!r}"
        raise InvalidInputError(msg)


def thumbnail(image: PILImage, max_side: int = 256) -> PILImage:
    """A copy of ``image`` whose longer side is at most ``max_side`` pixels (aspect ratio kept, never
    enlarged), in RGB: to store beside a page's vectors or show in a result list."""
    _check_side(max_side)
    small = image.copy() if image.mode == "RGB" else _to_rgb(image)
    small.thumbnail((max_side, max_side), _pil().Resampling.LANCZOS)
    return small


def to_base64_png(image: PILImage, *, max_side: int | None = None) -> str:
    """``image`` as a base64-encoded PNG (no line breaks), first shrunk so its longer side is at most
    ``max_side`` when given. :func:`to_data_url` wraps it for chat models."""
    _check_side(max_side)
    if max_side is not None and max(image.size) > max_side:
        image = thumbnail(image, max_side)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def to_data_url(image: PILImage, *, max_side: int | None = None) -> str:
    """``"data:image/png;base64,..."``: the image as LangChain's multimodal messages take it,
    ``{"type": "image_url", "image_url": {"url": to_data_url(page.image)}}``."""
    return "data:image/png;base64," + to_base64_png(image, max_side=max_side)


def page_image_base64(metadata: Mapping[str, Any], *, max_side: int | None = CHAT_IMAGE_SIDE) -> str | None:
    """A page's image as base64 PNG: the one kept in ``metadata`` (:data:`IMAGE_KEY`), else rendered again
    from its ``image`` reference; ``None`` for metadata that is not a page's."""
    kept = metadata.get(IMAGE_KEY)
    if isinstance(kept, str):
        return kept
    if isinstance(metadata.get("image"), str):
        return to_base64_png(page_image(metadata), max_side=max_side)
    return None
