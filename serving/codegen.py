"""Regenerate the Python modules of the protos in ``serving/protos`` (``make proto``).

For each proto (``features.proto``, ``scoring.proto``) the generated ``<name>_pb2.py``, ``<name>_pb2.pyi``
and ``<name>_pb2_grpc.py`` are committed so that installing Highwater needs no compiler; this module is
the one way to rebuild them, and ``tests/test_codegen.py`` checks that the committed files are exactly
what it produces. The protos are compiled from the repository root with ``-I .`` so the modules import as
``serving.protos.features_pb2`` (and ``scoring.proto`` can import ``serving/protos/features.proto``).

Example:
    $ uv run python -m serving.codegen
    wrote serving/protos/features_pb2.py, ..., serving/protos/scoring_pb2_grpc.py
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTOS = (Path("serving/protos/features.proto"), Path("serving/protos/scoring.proto"))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_paths(out_dir: Path = REPO_ROOT) -> list[Path]:
    """Where the generated modules land under ``out_dir``, proto by proto."""
    return [out_dir / f"{proto.with_suffix('')}{suffix}" for proto in PROTOS for suffix in GENERATED_SUFFIXES]


def generate(out_dir: Path = REPO_ROOT) -> list[Path]:
    """Compile the protos into ``out_dir`` (the repo root by default) and return the files written.

    Example:
        >>> generate(Path("/tmp/gen"))  # doctest: +SKIP
        [PosixPath('/tmp/gen/serving/protos/features_pb2.py'), ...]
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in generated_paths(out_dir):
        path.parent.mkdir(parents=True, exist_ok=True)
    # The well-known types (google/protobuf/timestamp.proto) ship inside grpc_tools.
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(REPO_ROOT / proto) for proto in PROTOS),
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code} on {', '.join(map(str, PROTOS))}")
    return generated_paths(out_dir)


def main() -> None:
    """Regenerate the committed modules in place."""
    written = generate()
    print("wrote " + ", ".join(str(p.relative_to(REPO_ROOT)) for p in written))


if __name__ == "__main__":
    main()
    sys.exit(0)
