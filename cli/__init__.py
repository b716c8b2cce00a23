"""The `rune` command-line client: drives runed over gRPC through the generated stubs only."""
