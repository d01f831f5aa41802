"""Generate the Python code of lmgate's protos (``make protos``); ``check`` says if it is current.

The .proto files under protos/lmgate/v1/ are the source of truth. The generated modules sit next
to them and are imported as ``lmgate.v1`` (the proto package), which pyproject maps to that folder.
Generation needs grpcio-tools at the version pinned in the ``test`` extra: its protoc decides the
bytes, and the generated code asks for a protobuf runtime at least that new.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROTOS = sorted((ROOT / "lmgate" / "v1").glob("*.proto"))
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    """Write the generated modules of every proto under ``out`` (mirroring lmgate/v1/)."""
    from grpc_tools import protoc

    args = ["protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    if protoc.main([*args, *(str(p) for p in PROTOS)]) != 0:
        raise RuntimeError("protoc failed")
    return [out / "lmgate" / "v1" / f"{p.stem}{s}" for p in PROTOS for s in SUFFIXES]


def stale() -> list[str]:
    """Generated files that differ from what the protos generate now (empty when current)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = [ROOT / f.relative_to(tmp) for f in fresh]
        return [str(c) for f, c in zip(fresh, committed, strict=True) if not c.exists() or not filecmp.cmp(f, c, False)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the generated code is not current")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        if out_of_date:
            sys.exit(f"generated code is out of date: {', '.join(out_of_date)} (run make protos)")
        return
    for path in generate(ROOT):
        print(f"wrote {path.relative_to(ROOT.parent)}")


if __name__ == "__main__":
    main()
