"""The shop app the CLI workflow tests cast: a configmap, a secret, a web service and a worker depending on it."""

from __future__ import annotations

import sys
from pathlib import Path

PY = sys.executable
# A service that logs its config and secret-derived env, then a counter line every 0.2 s.
WEB_SCRIPT = (
    "import os, sys, time\\n"
    "print('greeting', os.environ.get('GREETING'), 'pw-len', len(os.environ.get('DB_PASSWORD', '')), flush=True)\\n"
    "print('to-stderr', file=sys.stderr, flush=True)\\n"
    "i = 0\\n"
    "while True:\\n"
    "    i += 1; print('tick', i, flush=True); time.sleep(0.2)"
)


def cast_file(tmp: Path, greeting: str = "hello", scale: int = 2) -> Path:
    """Write the shop cast file (``greeting`` in its configmap and env) into ``tmp``."""
    f = tmp / f"app-{greeting}.yaml"
    f.write_text(
        f"""
configmap:
  name: web-config
  data:
    GREETING: {greeting}
secret:
  name: db-pass
  data:
    password: s3cr3t-value
services:
  - name: web
    runtime: process
    process:
      command: {PY}
      args: ["-u", "-c", "{WEB_SCRIPT}"]
    scale: {scale}
    labels: {{app: shop, tier: front}}
    envFrom:
      - configmap: web-config
    env:
      DB_PASSWORD: "{{{{secret:db-pass/password}}}}"
      LANG_TAG: {greeting}
  - name: worker
    runtime: process
    process:
      command: {PY}
      args: ["-c", "import time; time.sleep(3600)"]
    restartPolicy: OnFailure
    labels: {{app: shop, tier: back}}
    dependencies: [web]
"""
    )
    return f
