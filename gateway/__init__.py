"""The REST gateway (the `rest` role): HTTP/JSON and SSE routes generated from the protos."""
