"""ragplug.retrievers.colpali.pages: PDFs (made here, by hand, so the test knows their text; one encrypted
with the PDF standard security handler) and images (written with Pillow) into pages: sizes, modes, texts,
metadata, ids, lazy rendering, re-rendering from references, base64, and a clear error for every bad input."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

pdfium = pytest.importorskip("pypdfium2")
Image = pytest.importorskip("PIL.Image")

from ragplug.errors import InvalidInputError  # noqa: E402
from ragplug.retrievers.colpali.pages import (  # noqa: E402
    DEFAULT_DPI,
    MAX_PIXELS,
    Page,
    image_pages,
    load_pages,
    page_image,
    pdf_pages,
    thumbnail,
    to_base64_png,
    to_data_url,
)

# ----------------------------------------------------------------------------------- PDFs by hand

_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")
_FILE_ID = b"ragplug-test-pdf"


def _rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def make_pdf(
    pages: list[str],
    *,
    size: tuple[float, float] = (612, 792),
    sizes: list[tuple[float, float]] | None = None,
    rotate: int = 0,
    title: str | None = None,
    password: str | None = None,
) -> bytes:
    """A PDF with one page per string (Helvetica, WinAnsi text; "" makes a page without text), written by
    hand. With ``password``, encrypted with the standard security handler (RC4, 40 bits, revision 2) for
    that user password, so a reader must be given it. ``sizes`` gives each page its own size (points).
    Strings must not contain ``(``, ``)`` or ``\\``."""
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    key = b""
    if password is not None:
        padded = (password.encode() + _PAD)[:32]
        owner = _rc4(hashlib.md5(padded).digest()[:5], padded)
        permissions = -4
        key = hashlib.md5(padded + owner + permissions.to_bytes(4, "little", signed=True) + _FILE_ID).digest()[:5]
    kids = []
    for index, text in enumerate(pages):
        width, height = sizes[index] if sizes else size
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1") if text else b""
        if key:
            number = len(objects) + 1
            stream = _rc4(hashlib.md5(key + number.to_bytes(3, "little") + b"\0\0").digest()[:10], stream)
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %g %g] /Rotate %d /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % (width, height, rotate, len(objects))
        )
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    trailer = b" /ID [<%s> <%s>]" % (_FILE_ID.hex().encode(), _FILE_ID.hex().encode())
    if title is not None:
        objects.append(f"<< /Title ({title}) >>".encode("latin-1"))
        trailer += b" /Info %d 0 R" % len(objects)
    if key:
        user = _rc4(key, _PAD)
        objects.append(
            b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -4 >>" % (owner.hex().encode(), user.hex().encode())
        )
        trailer += b" /Encrypt %d 0 R" % len(objects)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer, xref)
    return bytes(out)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` × ``height`` pixels and holds none: enough for Pillow to read its size
    without the test allocating the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture
def report(tmp_path: Path) -> Path:
    path = tmp_path / "report.pdf"
    path.write_bytes(make_pdf(["Bananas are yellow. Café", ""], title="Fruit"))
    return path


@pytest.fixture
def locked(tmp_path: Path) -> Path:
    path = tmp_path / "locked.pdf"
    path.write_bytes(make_pdf(["Secret plans"], password="s3cret"))
    return path


def pixels(image: object) -> bytes:
    return image.tobytes()  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ PDFs


def test_pdf_pages_images_texts_metadata_ids(report: Path) -> None:
    pages = list(pdf_pages(report))
    assert [page.id for page in pages] == [f"{report.as_posix()}#p1", f"{report.as_posix()}#p2"]
    first, second = pages
    assert isinstance(first, Page)
    assert first.image.mode == "RGB" and first.image.size == (1224, 1584)  # US Letter at 144 dpi
    assert first.text == "Bananas are yellow. Café"
    assert second.text == ""
    assert first.metadata == {
        "source": report.as_posix(),
        "page": 1,
        "page_count": 2,
        "image": f"{report.as_posix()}#page=1",
        "width": 1224,
        "height": 1584,
        "dpi": DEFAULT_DPI,
        "title": "Fruit",
    }
    assert second.metadata["page"] == 2 and second.metadata["image"].endswith("#page=2")
    blank = np.asarray(second.image)
    assert (blank == 255).all()  # a page without content is white, not black or transparent
    assert (np.asarray(first.image) < 128).any()  # the text was drawn
    assert "Bananas" not in repr(first) and first.id in repr(first)  # a short repr


def test_pdf_dpi_rotation_and_relative_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "turned.pdf").write_bytes(make_pdf(["Sideways"], rotate=90))
    monkeypatch.chdir(tmp_path)
    (page,) = pdf_pages("docs/turned.pdf", dpi=72)
    assert page.image.size == (792, 612)  # /Rotate 90 swaps the sides
    assert page.id == "docs/turned.pdf#p1" and page.metadata["source"] == "docs/turned.pdf"
    assert page.metadata["dpi"] == 72 and page.text == "Sideways"
    (half,) = pdf_pages("docs/turned.pdf", dpi=36.5)
    assert half.image.size == (402, 311) and half.metadata["dpi"] == 36.5


def test_pdf_pages_are_lazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "long.pdf"
    path.write_bytes(make_pdf([f"Page {n}" for n in range(1, 6)]))
    rendered: list[int] = []
    closed: list[int] = []
    render, close = pdfium.PdfPage.render, pdfium.PdfDocument.close

    def counting_render(self: object, *args: object, **kwargs: object) -> object:
        rendered.append(1)
        return render(self, *args, **kwargs)

    def counting_close(self: object) -> object:
        closed.append(1)
        return close(self)

    monkeypatch.setattr(pdfium.PdfPage, "render", counting_render)
    monkeypatch.setattr(pdfium.PdfDocument, "close", counting_close)
    pages = pdf_pages(path, dpi=36)
    assert rendered == []  # nothing opened nor rendered at the call
    first = next(pages)
    assert first.text == "Page 1" and len(rendered) == 1
    second = next(pages)
    assert second.text == "Page 2" and len(rendered) == 2
    pages.close()  # leaving early closes the document
    assert closed and len(rendered) == 2


def test_encrypted_pdf_needs_the_right_password(locked: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"locked\.pdf: the PDF is encrypted; pass its password"):
        list(pdf_pages(locked))
    with pytest.raises(InvalidInputError, match=r"locked\.pdf: the PDF's password is wrong"):
        list(pdf_pages(locked, password="guess"))
    (page,) = pdf_pages(locked, password="s3cret", dpi=36)
    assert page.text == "Secret plans" and page.image.size == (306, 396)


def test_zero_page_corrupt_and_truncated_pdfs(tmp_path: Path, locked: Path) -> None:
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(make_pdf([]))
    garbage = tmp_path / "garbage.pdf"
    garbage.write_bytes(b"%PDF-1.4\nthis is not a PDF at all")
    word = tmp_path / "word.pdf"
    word.write_bytes(b"PK\x03\x04 a docx renamed")
    with pytest.raises(InvalidInputError, match=r"locked\.pdf: the PDF is encrypted"):
        list(pdf_pages(locked))
    # PDFium's last error is still the password error: a zero-page PDF must not be reported as encrypted
    with pytest.raises(InvalidInputError, match=r"empty\.pdf: the PDF has no pages"):
        list(pdf_pages(empty))
    for bad in (garbage, word):
        with pytest.raises(
            InvalidInputError, match=rf"{bad.name}: cannot open the PDF: it is not a PDF or it is damaged"
        ):
            list(pdf_pages(bad))
    with pytest.raises(InvalidInputError, match=r"missing\.pdf does not exist"):
        pdf_pages(tmp_path / "missing.pdf")  # at the call, not at the first page
    with pytest.raises(InvalidInputError, match=r"is not a file"):
        pdf_pages(tmp_path)


def test_huge_page_refused_before_rendering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "poster.pdf"
    path.write_bytes(make_pdf(["Big", "Small"], size=(20_000, 20_000)))

    def no_render(*args: object, **kwargs: object) -> object:
        raise AssertionError("the bitmap was allocated")

    with monkeypatch.context() as patch:
        patch.setattr(pdfium.PdfPage, "render", no_render)
        with pytest.raises(InvalidInputError) as info:
            list(pdf_pages(path))
    message = str(info.value)
    assert "poster.pdf, page 1" in message and "20000 × 20000 pt" in message
    assert "40000 × 40000 px (1600.0 Mpx) at 144 dpi" in message
    assert f"max_pixels={MAX_PIXELS}" in message and "dpi=28 or lower" in message
    (page, _) = pdf_pages(path, dpi=2)  # what the page is at a low resolution
    assert page.image.size == (556, 556) and page.text == "Big"


def test_max_pixels_hint_fits_and_none_lifts_the_limit(report: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"1224 × 1584 px \(1\.9 Mpx\) at 144 dpi.*dpi=103 or lower") as info:
        next(pdf_pages(report, max_pixels=1_000_000))
    assert "report.pdf, page 1" in str(info.value)
    page = next(pdf_pages(report, dpi=103, max_pixels=1_000_000))
    assert page.image.width * page.image.height <= 1_000_000
    assert next(pdf_pages(report, max_pixels=None)).image.size == (1224, 1584)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dpi": 0}, "dpi must be a positive number"),
        ({"dpi": -72}, "dpi must be a positive number"),
        ({"dpi": float("nan")}, "dpi must be a positive number"),
        ({"dpi": True}, "dpi must be a positive number"),
        ({"dpi": "144"}, "dpi must be a positive number"),
        ({"max_pixels": 0}, "max_pixels must be a positive integer or None"),
        ({"max_pixels": 1.5}, "max_pixels must be a positive integer or None"),
    ],
)
def test_bad_arguments_are_refused_at_the_call(report: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        pdf_pages(report, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=message):
        load_pages(report, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- images


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """One image of each kind ragplug reads, in tmp_path/images."""
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(root / "a.png")
    Image.new("RGBA", (20, 10), (0, 0, 0, 0)).save(root / "clear.png")
    Image.new("RGB", (32, 16), (200, 100, 50)).save(root / "photo.jpg", quality=95)
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(root / "print.jpeg")
    Image.new("RGB", (12, 12), (0, 0, 255)).save(root / "web.webp", lossless=True)
    Image.new("L", (9, 7), 128).save(root / "grey.bmp")
    red, blue = Image.new("RGB", (10, 10), (255, 0, 0)), Image.new("RGB", (10, 10), (0, 0, 255))
    red.save(root / "anim.gif", save_all=True, append_images=[blue], duration=100)
    Image.new("RGB", (100, 50), "white").save(
        root / "scan.tiff", save_all=True, append_images=[Image.new("L", (60, 80), 0)]
    )
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(root / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    Image.new("RGB", (40, 20), "white").save(root / "phone.jpg", exif=exif)
    return root


def test_image_files_become_rgb_pages(images: Path) -> None:
    names = [
        "a.png",
        "clear.png",
        "photo.jpg",
        "print.jpeg",
        "web.webp",
        "grey.bmp",
        "anim.gif",
        "deep.png",
        "phone.jpg",
    ]
    pages = list(image_pages([images / name for name in names]))
    by_name = {Path(page.metadata["source"]).name: page for page in pages}
    assert list(by_name) == names
    for name, page in by_name.items():
        path = (images / name).as_posix()
        assert page.id == path and page.text == "" and page.image.mode == "RGB"
        assert page.metadata == {
            "source": path,
            "page": 1,
            "page_count": 1,
            "image": path,
            "width": page.image.width,
            "height": page.image.height,
        }
    assert by_name["a.png"].image.size == (40, 30) and by_name["a.png"].image.getpixel((0, 0)) == (10, 20, 30)
    assert by_name["clear.png"].image.getpixel((5, 5)) == (255, 255, 255)  # transparency on white
    assert by_name["print.jpeg"].image.getpixel((4, 4)) == (255, 255, 255)  # CMYK converted
    assert by_name["web.webp"].image.getpixel((0, 0)) == (0, 0, 255)
    assert by_name["grey.bmp"].image.getpixel((0, 0)) == (128, 128, 128)
    assert by_name["anim.gif"].image.getpixel((0, 0)) == (255, 0, 0)  # the first frame only
    deep = by_name["deep.png"].image
    assert deep.getpixel((0, 0)) == (0, 0, 0) and deep.getpixel((1, 0)) == (255, 255, 255)  # 16 bits scaled
    assert by_name["phone.jpg"].image.size == (20, 40)  # EXIF orientation applied


def test_multipage_tiff_gives_one_page_per_frame(images: Path) -> None:
    first, second = image_pages(images / "scan.tiff")
    source = (images / "scan.tiff").as_posix()
    assert (first.id, second.id) == (f"{source}#p1", f"{source}#p2")
    assert first.image.size == (100, 50) and second.image.size == (60, 80)
    assert second.metadata["page_count"] == 2 and second.metadata["image"] == f"{source}#page=2"
    assert second.image.getpixel((0, 0)) == (0, 0, 0)
    assert pixels(page_image(second.metadata)) == pixels(second.image)


def test_pil_images_in_memory(images: Path) -> None:
    rgb = Image.new("RGB", (16, 8), (1, 2, 3))
    same = Image.new("RGB", (16, 8), (1, 2, 3))
    other = Image.new("RGB", (16, 8), (1, 2, 4))
    pages = list(image_pages([rgb, same, other, Image.new("LA", (4, 4), (0, 0))]))
    assert pages[0].image is rgb  # already RGB: used as it is
    assert pages[0].id == pages[1].id != pages[2].id  # a digest of the pixels: stable across runs
    assert pages[0].id.startswith("image:") and len(pages[0].id) == len("image:") + 16
    assert pages[0].metadata["image"] is None and pages[0].metadata["source"] == pages[0].id
    assert pages[3].image.mode == "RGB" and pages[3].image.getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(InvalidInputError, match=r"image:[0-9a-f]{16}: no image reference in the metadata"):
        page_image(pages[0].metadata)
    with Image.open(images / "a.png") as opened:
        (page,) = image_pages(opened)  # one image, not a sequence
        assert page.id == (images / "a.png").as_posix() == page.metadata["image"]
    with pytest.raises(InvalidInputError, match="expected a file path or a PIL image, got int"):
        image_pages([3])  # type: ignore[list-item]
    (floats,) = image_pages(Image.fromarray(np.array([[0.0, 1.0]], dtype=np.float32)))
    assert floats.image.getpixel((0, 0)) == (0, 0, 0) and floats.image.getpixel((1, 0)) == (255, 255, 255)
    lenient = load_pages(rgb, Image.new("RGB", (100, 100)), max_pixels=1000, on_error="skip")
    assert [page.image for page in lenient] == [rgb]
    assert lenient.failed[0][0].startswith("image:") and "100 × 100 px" in lenient.failed[0][1]
    assert lenient.summary().startswith("2 PIL images; failed 1: image:")


def test_files_that_are_not_images(tmp_path: Path, report: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    eps = tmp_path / "drawing.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    with pytest.raises(InvalidInputError, match=r"fake\.png: not an image ragplug reads \(PNG, JPEG, WEBP"):
        list(image_pages(fake))
    with pytest.raises(InvalidInputError, match=r"drawing\.jpg: not an image ragplug reads"):
        list(image_pages(eps))  # never handed to Pillow's EPS reader (Ghostscript)
    with pytest.raises(InvalidInputError, match=r"notes\.txt: cannot read '\.txt' files; ragplug reads \.bmp"):
        image_pages(text)
    with pytest.raises(InvalidInputError, match=r"report\.pdf: cannot read '\.pdf' files"):
        image_pages(report)  # PDFs go through pdf_pages or load_pages
    with pytest.raises(InvalidInputError, match=r"gone\.png does not exist"):
        image_pages(tmp_path / "gone.png")


def test_huge_images_refused_before_decoding(tmp_path: Path) -> None:
    large = tmp_path / "large.png"
    large.write_bytes(png_header(9_000, 9_000))  # 81 Mpx: above max_pixels, below Pillow's warning
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(20_000, 20_000))  # 400 Mpx: above Pillow's decompression-bomb error
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's decompression-bomb warning must not be the guard
        with pytest.raises(
            InvalidInputError, match=r"large\.png: the image is 9000 × 9000 px \(81\.0 Mpx\), above max_pixels"
        ):
            list(image_pages(large))
    with pytest.raises(InvalidInputError, match=r"huge\.png: the image is too large to decode safely"):
        list(image_pages(huge))
    with pytest.raises(InvalidInputError, match=r"the image is 40 × 30 px"):
        list(image_pages(Image.new("RGB", (40, 30)), max_pixels=1000))


# ----------------------------------------------------------------------------- files and folders


@pytest.fixture
def docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path/docs with PDFs and images at two depths, hidden files and folders, and other files; the
    current folder is tmp_path."""
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / ".cache").mkdir()
    (root / "b.pdf").write_bytes(make_pdf(["Alpha", "Beta"]))
    (root / "sub" / "c.PDF").write_bytes(make_pdf(["Gamma"]))
    Image.new("RGB", (20, 10), "red").save(root / "a.png")
    Image.new("RGB", (20, 10), "blue").save(root / "sub" / "z.jpg")
    (root / "notes.txt").write_text("not a page")
    (root / "table.docx").write_bytes(b"PK")
    (root / "sub" / "more.docx").write_bytes(b"PK")
    (root / "README").write_text("no extension")
    Image.new("RGB", (5, 5)).save(root / ".hidden.png")
    (root / ".cache" / "old.pdf").write_bytes(make_pdf(["Hidden"]))
    monkeypatch.chdir(tmp_path)
    return root


def test_load_pages_walks_folders(docs: Path) -> None:
    pages = load_pages("docs", dpi=36)
    assert pages.files == ["docs/a.png", "docs/b.pdf", "docs/sub/c.PDF", "docs/sub/z.jpg"]
    assert pages.skipped == {".docx": 2, ".txt": 1, "": 1}
    assert pages.skipped_summary() == "2 .docx, 1 without extension, 1 .txt"
    assert pages.summary() == "2 PDFs, 2 image files; skipped 2 .docx, 1 without extension, 1 .txt"
    assert pages.count() == 5
    assert repr(pages) == f"PageSet({pages.summary()})"
    got = list(pages)
    assert [page.id for page in got] == [
        "docs/a.png",
        "docs/b.pdf#p1",
        "docs/b.pdf#p2",
        "docs/sub/c.PDF#p1",
        "docs/sub/z.jpg",
    ]
    assert [page.text for page in got] == ["", "Alpha", "Beta", "Gamma", ""]
    assert got[1].image.size == (306, 396)  # dpi reaches the PDFs
    assert [page.id for page in pages] == [page.id for page in got]  # iterating again gives the same pages


def test_load_pages_mixes_files_folders_and_pil_images(docs: Path) -> None:
    picture = Image.new("RGB", (3, 3), "green")
    pages = load_pages("docs/sub/c.PDF", picture, "docs/sub", Path("docs/b.pdf"))
    assert pages.files == ["docs/sub/c.PDF", "docs/sub/z.jpg", "docs/b.pdf"]  # c.PDF read once
    assert pages.summary() == "2 PDFs, 1 image file, 1 PIL image; skipped 1 .docx"
    ids = [page.id for page in pages]
    assert (
        ids[0] == "docs/sub/c.PDF#p1"
        and ids[1].startswith("image:")
        and ids[2:]
        == [
            "docs/sub/z.jpg",
            "docs/b.pdf#p1",
            "docs/b.pdf#p2",
        ]
    )
    assert pages.count() == 5


def test_load_pages_refuses_at_the_call(docs: Path) -> None:
    (docs / "only_text").mkdir()
    (docs / "only_text" / "a.txt").write_text("x")
    (docs / "only_text" / "b.csv").write_text("x")
    (docs / "nothing").mkdir()
    (docs / "nothing" / ".hidden.pdf").write_bytes(make_pdf(["x"]))
    with pytest.raises(
        InvalidInputError,
        match=r"docs/only_text: no PDF or image to read in this folder \(only 2 other files\); ragplug reads \.bmp",
    ):
        load_pages("docs/only_text")
    with pytest.raises(InvalidInputError, match=r"docs/nothing: no PDF or image to read in this folder \(no files\)"):
        load_pages("docs", "docs/nothing")
    with pytest.raises(InvalidInputError, match=r"docs/notes\.txt: cannot read '\.txt' files"):
        load_pages("docs/notes.txt")
    with pytest.raises(InvalidInputError, match=r"docs/README: cannot read files without an extension"):
        load_pages("docs/README")
    with pytest.raises(InvalidInputError, match=r"docs/missing\.pdf does not exist"):
        load_pages("docs/missing.pdf")
    with pytest.raises(InvalidInputError, match="no sources given"):
        load_pages()
    with pytest.raises(InvalidInputError, match="on_error must be 'raise' or 'skip'"):
        load_pages("docs", on_error="ignore")  # type: ignore[arg-type]


def test_load_pages_bad_files_raise_or_are_skipped(docs: Path) -> None:
    (docs / "c_locked.pdf").write_bytes(make_pdf(["Locked"], password="pw"))
    (docs / "d_broken.pdf").write_bytes(b"%PDF-1.7\nbroken")
    (docs / "e_fake.png").write_bytes(b"\x89PNG")
    (docs / "f_poster.pdf").write_bytes(make_pdf(["Fits", "Too big"], sizes=[(612, 792), (20_000, 20_000)]))
    strict = load_pages("docs", dpi=36)
    with pytest.raises(InvalidInputError, match=r"docs/c_locked\.pdf: the PDF is encrypted"):
        list(strict)
    with pytest.raises(InvalidInputError, match=r"docs/c_locked\.pdf"):
        strict.count()

    lenient = load_pages("docs", dpi=36, on_error="skip")
    ids = [page.id for page in lenient]
    assert ids == [
        "docs/a.png",
        "docs/b.pdf#p1",
        "docs/b.pdf#p2",
        "docs/f_poster.pdf#p1",
        "docs/sub/c.PDF#p1",
        "docs/sub/z.jpg",
    ]
    failed = dict(lenient.failed)
    assert list(failed) == ["docs/c_locked.pdf", "docs/d_broken.pdf", "docs/e_fake.png", "docs/f_poster.pdf"]
    assert "encrypted" in failed["docs/c_locked.pdf"] and "damaged" in failed["docs/d_broken.pdf"]
    assert "not an image" in failed["docs/e_fake.png"]
    assert "f_poster.pdf, page 2" in failed["docs/f_poster.pdf"] and "dpi=28 or lower" in failed["docs/f_poster.pdf"]
    assert lenient.summary().endswith(
        "failed 4: docs/c_locked.pdf, docs/d_broken.pdf, docs/e_fake.png, docs/f_poster.pdf"
    )
    assert lenient.count() == 7  # the files that cannot be opened count 0 pages; the poster counts 2

    with_password = load_pages("docs/c_locked.pdf", "docs/b.pdf", password="pw", dpi=36)
    assert [page.text for page in with_password] == ["Locked", "Alpha", "Beta"]  # ignored by unencrypted PDFs


# ----------------------------------------------------------------------------- images on request


def test_page_image_renders_a_page_again(docs: Path, tmp_path: Path) -> None:
    pages = list(load_pages("docs"))
    for page in pages:
        again = page_image(page.metadata)
        assert again.mode == "RGB" and again.size == page.image.size
        assert pixels(again) == pixels(page.image)  # PDFium and the image decoders are deterministic
    pdf_page = pages[2]  # docs/b.pdf page 2
    assert pixels(page_image("docs/b.pdf#page=2")) == pixels(pdf_page.image)
    assert page_image(pdf_page.metadata, dpi=72).size == (612, 792)  # dpi given wins over the recorded one
    assert page_image("docs/b.pdf#page=1").size == (1224, 1584)  # a bare reference: the default dpi
    assert page_image("b.pdf#page=1", root="docs", dpi=36).size == (306, 396)
    assert page_image(Path("docs/a.png")).size == (20, 10)

    with pytest.raises(InvalidInputError, match=r"docs/b\.pdf: no page 3; the PDF has 2"):
        page_image("docs/b.pdf#page=3")
    with pytest.raises(InvalidInputError, match=r"docs/b\.pdf: a PDF page reference needs the page"):
        page_image("docs/b.pdf")
    with pytest.raises(InvalidInputError, match=r"docs/gone\.pdf does not exist"):
        page_image("docs/gone.pdf#page=1")
    with pytest.raises(InvalidInputError, match=r"docs/notes\.txt: cannot read '\.txt' files"):
        page_image("docs/notes.txt")
    with pytest.raises(InvalidInputError, match="expected a page reference"):
        page_image(3)  # type: ignore[arg-type]

    odd = tmp_path / "docs" / "q#1.pdf"  # '#' in a file name
    odd.write_bytes(make_pdf(["Odd"]))
    (page,) = load_pages("docs/q#1.pdf", dpi=36)
    assert page.metadata["image"] == "docs/q#1.pdf#page=1"
    assert pixels(page_image(page.metadata)) == pixels(page.image)


def test_page_image_of_an_encrypted_pdf(locked: Path) -> None:
    (page,) = pdf_pages(locked, password="s3cret", dpi=36)
    with pytest.raises(InvalidInputError, match="encrypted"):
        page_image(page.metadata)
    assert pixels(page_image(page.metadata, password="s3cret")) == pixels(page.image)


def test_base64_png_round_trip_and_thumbnails(report: Path) -> None:
    page = next(pdf_pages(report, dpi=36))
    encoded = to_base64_png(page.image)
    assert "\n" not in encoded
    decoded = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert decoded.format == "PNG" and pixels(decoded.convert("RGB")) == pixels(page.image)
    small = Image.open(io.BytesIO(base64.b64decode(to_base64_png(page.image, max_side=100))))
    assert max(small.size) == 100 and small.size == (77, 100)
    url = to_data_url(page.image, max_side=64)
    assert url.startswith("data:image/png;base64,")
    message = {"type": "image_url", "image_url": {"url": url}}  # LangChain's multimodal content block
    assert Image.open(io.BytesIO(base64.b64decode(message["image_url"]["url"].split(",", 1)[1]))).size == (49, 64)
    thumb = thumbnail(page.image, 50)
    assert thumb.size == (39, 50) and thumb.mode == "RGB" and page.image.size == (306, 396)
    assert thumbnail(Image.new("L", (10, 5)), 256).size == (10, 5)  # never enlarged
    with pytest.raises(InvalidInputError, match="max_side must be a positive integer"):
        to_base64_png(page.image, max_side=0)


def test_importing_pages_loads_neither_pdfium_nor_pillow() -> None:
    code = (
        "import sys, ragplug.retrievers.colpali.pages as p; "
        "print(' '.join(m for m in ('pypdfium2', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


# ----------------------------------------------------------------------------------- token pooling
def _unit_rows(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_pool_vectors_merges_near_duplicates_and_keeps_what_it_is_told() -> None:
    from ragplug.retrievers.colpali.pooling import pool_vectors

    rng = np.random.default_rng(0)
    prompt, distinct, centres = _unit_rows(rng, 3), _unit_rows(rng, 3), _unit_rows(rng, 3)
    groups = [c + 0.01 * _unit_rows(rng, 7) for c in centres]  # three blank-page-like runs of near-duplicates
    # page order: prompt, group 0, distinct 0, group 1, distinct 1, group 2, distinct 2 (27 rows)
    page = np.concatenate([prompt, groups[0], distinct[:1], groups[1], distinct[1:2], groups[2], distinct[2:]])
    keep = np.zeros(len(page), dtype=bool)
    keep[:3] = True
    pooled = pool_vectors(page, 3, keep=keep)  # 27 // 3 = 9 rows: the 3 kept, 6 for the other 24
    means = [g.mean(axis=0) / np.linalg.norm(g.mean(axis=0)) for g in groups]
    expected = np.stack([*prompt, means[0], distinct[0], means[1], distinct[1], means[2], distinct[2]])
    np.testing.assert_allclose(pooled, expected, atol=1e-6)
    assert pooled.dtype == np.float32 and pooled.flags.c_contiguous
    unpooled_score = (distinct @ page.T).max(axis=1).sum()  # MaxSim of distinct rows as a query: nothing lost
    assert (distinct @ pooled.T).max(axis=1).sum() == pytest.approx(unpooled_score, abs=1e-5)


@pytest.mark.parametrize("linkage", ["single", "average", "complete", "ward"])
def test_pool_vectors_keeps_one_in_factor_unit_rows(linkage: str) -> None:
    from ragplug.retrievers.colpali.pooling import pool_vectors

    page = _unit_rows(np.random.default_rng(1), 50)
    for factor, rows in ((2, 25), (3, 16), (4, 12), (100, 1)):
        pooled = pool_vectors(page, factor, linkage=linkage)
        assert pooled.shape == (rows, 16)
        np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pool_vectors(page, 1), page)  # factor 1: a copy
    keep = np.ones(50, dtype=bool)
    np.testing.assert_array_equal(pool_vectors(page, 3, keep=keep), page)  # nothing left to pool
    np.testing.assert_array_equal(pool_vectors(page[:1], 3), page[:1])


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((np.ones((4, 2)), 0), {}, "factor must be a positive integer"),
        ((np.ones((4, 2)), True), {}, "factor must be a positive integer"),
        ((np.ones((4, 2)), 2.5), {}, "factor must be a positive integer"),
        ((np.ones(4), 2), {}, "non-empty 2-D matrix"),
        ((np.ones((0, 2)), 2), {}, "non-empty 2-D matrix"),
        ((np.full((4, 2), np.nan), 2), {}, "NaN or infinite"),
        ((["a", "b"], 2), {}, "2-D matrix of numbers"),
        ((np.ones((4, 2)), 2), {"keep": [1, 0, 0, 0]}, "boolean mask of the 4 rows"),
        ((np.ones((4, 2)), 2), {"keep": np.ones(3, dtype=bool)}, "boolean mask of the 4 rows"),
        ((np.ones((4, 2)), 2), {"linkage": "median"}, "unknown linkage 'median'"),
    ],
)
def test_pool_vectors_refuses_bad_arguments(args: tuple, kwargs: dict, message: str) -> None:
    from ragplug.retrievers.colpali.pooling import pool_vectors

    with pytest.raises(InvalidInputError, match=message):
        pool_vectors(*args, **kwargs)


def test_importing_pooling_does_not_import_torch() -> None:
    code = "import sys, ragplug.retrievers.colpali.pooling; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
