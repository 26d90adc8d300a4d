"""Source material: text documents (.txt, .md, JSONL) and images (a folder, or JSONL of image paths with optional text).

Every source gets a unique id and is checked on load: a file that is missing or unreadable, a record without its
text, an image that is not an image or does not decode (a truncated file) is one line naming the file, the record and
the field.

- A .txt or .md file is one document, cut at blank lines into chunks of at most --chunk_words words (a paragraph
  is never cut): the id is the file's stem, and `#k` for the k-th chunk when there are several.
- A JSONL document file holds one source per line, its text in --text_field (default `text`), its id in `id`
  (default `<stem>:<line>`); any other fields are kept (labels, for instance) and travel with the source.
- An image folder: every .png/.jpg/.jpeg/.gif/.bmp/.webp file in it (sorted), id the file name. An image JSONL:
  `{"id", "image": path relative to the JSONL file, "text": optional}` per line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..cli import fail
from ..jsonl import decode_utf8, read_bytes, read_jsonl
from ..vision import load_image

DOCUMENT_SUFFIXES = (".txt", ".md", ".jsonl")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")


@dataclass
class Source:
    id: str
    text: str  # the document's text, or an image's accompanying text (may be empty)
    file: str  # where it was read from
    image: str | None = None  # absolute path of the image, for image sources
    extra: dict = field(default_factory=dict)  # other fields of a JSONL record (labels, ...), kept as they are

    def to_dict(self) -> dict:
        row = {"id": self.id, "text": self.text, "file": self.file}
        if self.image is not None:
            row["image"] = self.image
        if self.extra:
            row["extra"] = self.extra
        return row


def chunk_paragraphs(text: str, max_words: int) -> list[str]:
    """Paragraphs (split at blank lines) joined into chunks of at most max_words words; a longer paragraph stays whole."""
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    chunks, current, words = [], [], 0
    for paragraph in paragraphs:
        size = len(paragraph.split())
        if current and words + size > max_words:
            chunks.append("\n\n".join(current))
            current, words = [], 0
        current.append(paragraph)
        words += size
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def read_text_document(path: Path, max_words: int) -> list[Source]:
    text = decode_utf8(path, read_bytes(path)).strip()
    if not text:
        fail(f"--documents {path}: the file is empty")
    chunks = chunk_paragraphs(text, max_words)
    if len(chunks) == 1:
        return [Source(id=path.stem, text=chunks[0], file=str(path))]
    return [Source(id=f"{path.stem}#{k}", text=chunk, file=str(path)) for k, chunk in enumerate(chunks)]


def source_id(row: dict, default: str, where: str) -> str:
    value = row.get("id", default)
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        fail(f"{where}: field 'id' must be a string or an integer, found {type(value).__name__}")
    return str(value)


def read_document_jsonl(path: Path, text_field: str) -> list[Source]:
    sources = []
    for number, row in read_jsonl(path):
        where = f"--documents {path}:{number}"
        text = row.get(text_field)
        if not isinstance(text, str) or not text.strip():
            fail(f"{where}: field '{text_field}' is missing or not a non-empty string (--text_field names another)")
        extra = {k: v for k, v in row.items() if k not in ("id", text_field)}
        sources.append(Source(id=source_id(row, f"{path.stem}:{number}", where), text=text.strip(), file=str(path), extra=extra))
    if not sources:
        fail(f"--documents {path}: holds no records")
    return sources


def load_documents(paths: list[str], text_field: str, max_words: int) -> list[Source]:
    sources = []
    for name in paths:
        path = Path(name)
        if not path.exists():
            fail(f"--documents {name}: no such file")
        if path.is_dir():
            fail(f"--documents {name}: is a folder, expected a .txt, .md or .jsonl file")
        if path.suffix.lower() not in DOCUMENT_SUFFIXES:
            fail(f"--documents {name}: unsupported file type '{path.suffix}' (use {', '.join(DOCUMENT_SUFFIXES)})")
        path = path.resolve()
        sources += read_document_jsonl(path, text_field) if path.suffix.lower() == ".jsonl" else read_text_document(path, max_words)
    return sources


def load_images(spec: str, text_field: str) -> list[Source]:
    path = Path(spec)
    if not path.exists():
        fail(f"--images {spec}: no such folder or file")
    path = path.resolve()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            fail(f"--images {spec}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        for file in files:
            load_image(file, f"--images {spec}")  # decoded whole: a truncated file fails here, not mid-run
        return [Source(id=file.name, text="", file=str(path), image=str(file)) for file in files]
    if path.suffix.lower() != ".jsonl":
        fail(f"--images {spec}: expected a folder of images or a .jsonl file of image paths")
    sources = []
    for number, row in read_jsonl(path):
        where = f"--images {path}:{number}"
        image = row.get("image")
        if not isinstance(image, str) or not image.strip():
            fail(f"{where}: field 'image' is missing or not a path")
        image_path = (path.parent / Path(image).expanduser()).resolve()
        load_image(image_path, f"{where}: field 'image'")  # decoded whole, as above
        text = row.get(text_field, "")
        if not isinstance(text, str):
            fail(f"{where}: field '{text_field}' must be a string, found {type(text).__name__}")
        extra = {k: v for k, v in row.items() if k not in ("id", "image", text_field)}
        sources.append(Source(id=source_id(row, f"{path.stem}:{number}", where), text=text.strip(), file=str(path),
                              image=str(image_path), extra=extra))
    if not sources:
        fail(f"--images {spec}: holds no records")
    return sources


def load_sources(documents: list[str], images: str | None, text_field: str, max_words: int) -> list[Source]:
    sources = load_documents(documents, text_field, max_words) + (load_images(images, text_field) if images else [])
    if not sources:
        fail("no source material: pass --documents FILE ... and/or --images FOLDER|FILE.jsonl")
    seen: dict[str, str] = {}
    for source in sources:
        if source.id in seen:
            fail(f"{source.file}: source id {source.id!r} is also used in {seen[source.id]} (ids must be unique to resume)")
        seen[source.id] = source.file
    return sources
