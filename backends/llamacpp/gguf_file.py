"""Opening a GGUF file's header, with errors that say what is wrong with the file.

``gguf.GGUFReader`` memory-maps the file and reads its header; on a damaged file it fails with
whatever numpy says ("cannot reshape array of size 159296 into shape (768,272)" for a file cut
short). :func:`open_gguf` checks what can be checked first — the file exists, starts with the
GGUF magic, and is as long as its tensor table says — and raises :class:`GGUFFileError` naming
the file, what is wrong and what to do. Every reader of GGUF headers goes through it: the engine
before loading (``serve``), ``lmgate plan``, ``lmgate eval`` and ``gguf_to_hf``.

``gguf`` (and numpy) are imported on first use, so the error class costs nothing to import.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gguf

_MAGIC = b"GGUF"


class GGUFFileError(ValueError):
    """The file is missing, is not GGUF, or is damaged; the message names it and says what to do."""


def open_gguf(path: Path) -> gguf.GGUFReader:
    """The file's reader (header parsed, tensor data mapped, nothing loaded); GGUFFileError otherwise."""
    if not path.exists():
        raise GGUFFileError(f"{path}: no such file")
    if path.is_dir():
        hint = (
            " (an HF checkpoint? convert it: lmgate quantize gguf --from DIR)"
            if (path / "config.json").exists()
            else ""
        )
        raise GGUFFileError(f"{path} is a directory, not a GGUF file{hint}")
    size = path.stat().st_size
    with path.open("rb") as file:
        magic = file.read(len(_MAGIC))
    if magic != _MAGIC:
        what = "it is empty" if size == 0 else f"it starts with {magic!r}, not {_MAGIC!r}"
        raise GGUFFileError(f"{path} is not a GGUF file ({what})")
    try:
        return _reader_class()(path)
    except _Truncated as cut:
        raise GGUFFileError(
            f"{path} is truncated: it has {size} bytes but its tensors end at byte {cut.needed} "
            "(an interrupted download or copy?): fetch or convert it again"
        ) from None
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as exc:
        raise GGUFFileError(f"{path} is a damaged GGUF file ({size} bytes): its header cannot be read ({exc})") from exc


class _Truncated(Exception):
    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


@functools.cache
def _reader_class() -> type[gguf.GGUFReader]:
    import gguf
    import numpy as np

    class CheckedReader(gguf.GGUFReader):
        """GGUFReader, checking the file is long enough before it maps each tensor's data."""

        # NOTE: _build_tensors is the reader's internal step after the tensor table is parsed (gguf 0.17 to
        # 0.19); its ``fields`` carry each tensor's dims, type and offset. Were it renamed, this check would
        # no longer run and a cut file would again fail with numpy's message (tests/unit/test_cli_messages).
        def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
            end = 0
            for field in fields:
                _, _, _, dims, raw_type, offset = field.parts
                block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(raw_type[0]))]
                end = max(end, start_offs + int(offset[0]) + int(np.prod(dims)) * type_size // block)
            if end > len(self.data):
                raise _Truncated(end)
            super()._build_tensors(start_offs, fields)

    return CheckedReader
