"""End-to-end tests: the real `rune` CLI against a real runed."""
