"""runed: the control plane of rune, serving the rune.api contract over gRPC and REST."""

__version__ = "0.1.0"
