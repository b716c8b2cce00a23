"""Batched latency tallies write the same histogram as one Histogram.observe per call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# prometheus-client picks its multiprocess backend at import, so the check runs in a fresh process.
SCRIPT = r"""
import json, os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import CollectorRegistry, Histogram, multiprocess
from runed.transport import metrics

values = [0.0, 0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.01, 0.0101, 0.4, 2.5, 9.99, 10.0, 11.0, 120.0]
metrics._metrics["latency"] = Histogram(
    "t_batched", "", ["transport", "method"], buckets=metrics.LATENCY_BUCKETS
)
from prometheus_client import Counter
metrics._metrics["requests"] = Counter("t_calls", "", ["transport", "method", "code"])
reference = Histogram("t_reference", "", ["transport", "method"], buckets=metrics.LATENCY_BUCKETS)
for v in values * 3:
    metrics.record("rest", "M", "OK", v)
    reference.labels("rest", "M").observe(v)
metrics.flush()
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
out = {}
for fam in registry.collect():
    for s in fam.samples:
        if s.name.startswith(("t_batched", "t_reference")):
            kind = s.name.split("_", 2)[1]
            suffix = s.name.rsplit("_", 1)[1]
            out.setdefault(kind, {})[suffix + str(sorted(s.labels.items()))] = round(s.value, 9)
print(json.dumps(out))
"""


def test_batched_tallies_equal_per_call_observations(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(out.stdout)
    assert result["batched"] == result["reference"]
    assert result["batched"]["count" + str(sorted({"transport": "rest", "method": "M"}.items()))] == 42
