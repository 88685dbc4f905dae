"""The committed gRPC modules are exactly what ``serving.codegen`` generates from the committed proto.

If this fails, the proto was edited without regenerating (or with other grpcio-tools/protobuf versions
than the lock file's): run ``make proto`` and commit the result.
"""

from __future__ import annotations

from pathlib import Path

from serving import codegen


def test_regenerated_modules_are_identical(tmp_path: Path) -> None:
    written = codegen.generate(tmp_path)
    committed = codegen.generated_paths()

    assert [p.relative_to(tmp_path) for p in written] == [p.relative_to(codegen.REPO_ROOT) for p in committed]
    for fresh, kept in zip(written, committed, strict=True):
        assert fresh.read_bytes() == kept.read_bytes(), f"{kept} is stale: run `make proto`"


def test_generated_modules_import_under_the_serving_package() -> None:
    from serving.protos import features_pb2, features_pb2_grpc

    service = features_pb2.DESCRIPTOR.services_by_name["FeatureService"]
    assert service.full_name == "highwater.v1.FeatureService"
    assert features_pb2.DESCRIPTOR.name == "serving/protos/features.proto"
    assert hasattr(features_pb2_grpc, "FeatureServiceStub")
