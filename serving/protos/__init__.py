"""Generated protobuf and gRPC modules of ``highwater.v1`` (rebuild with ``make proto``; do not edit)."""
