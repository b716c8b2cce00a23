"""Generated rune.api protobuf and gRPC modules (see scripts/genproto.py)."""
