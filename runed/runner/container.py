"""The container runner: Docker Engine API over its unix socket (httpx), no Docker SDK needed."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import httpx

from runed.runner.base import Handle, LaunchSpec, Observation, RunnerError, Target, stop_each


class ContainerRunner:
    """Runs instances as containers; when the engine is unreachable every start fails (fatal)."""

    name = "container"

    def __init__(self, socket_path: str, api_version: str = "", fallback_api_version: str = "1.43") -> None:
        self.socket_path = socket_path
        self.api_version = api_version or fallback_api_version
        self._checked_at = 0.0
        self._reason: str | None = "not checked"

    def _client(self, timeout: float = 5.0) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=self.socket_path)
        return httpx.Client(transport=transport, base_url=f"http://docker/v{self.api_version}", timeout=timeout)

    def unavailable_reason(self) -> str | None:
        # Cached briefly: the reconciler asks for every container instance on every pass.
        if time.monotonic() - self._checked_at < 5.0:
            return self._reason
        self._checked_at = time.monotonic()
        if not Path(self.socket_path).exists():
            self._reason = f"container runtime unavailable: no Docker engine socket at {self.socket_path}"
            return self._reason
        try:
            with self._client(timeout=2.0) as c:
                c.get("/_ping").raise_for_status()
            self._reason = None
        except httpx.HTTPError as e:
            self._reason = f"container runtime unavailable: Docker engine at {self.socket_path} not reachable ({e})"
        return self._reason

    def start(self, spec: LaunchSpec) -> Handle:
        reason = self.unavailable_reason()
        if reason:
            raise RunnerError(reason, fatal=True)
        body: dict[str, Any] = {
            "Image": spec.image,
            "Env": [f"{k}={v}" for k, v in spec.env.items()],
            "Labels": {
                "rune.managed": "true",
                "rune.namespace": spec.namespace,
                "rune.instance.id": spec.instance_id,
                "rune.service.name": spec.service,
            },
            "HostConfig": {
                "PortBindings": {f"{p}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(p)}] for p in spec.ports.values()}
            },
        }
        if spec.argv:
            body["Cmd"] = spec.argv
        name = f"rune-{spec.namespace}-{spec.name}-{spec.instance_id[:8]}"
        try:
            with self._client(timeout=60.0) as c:
                r = c.post("/containers/create", params={"name": name}, json=body)
                if r.status_code == 404:
                    c.post("/images/create", params={"fromImage": spec.image}).raise_for_status()
                    r = c.post("/containers/create", params={"name": name}, json=body)
                r.raise_for_status()
                cid = str(r.json()["Id"])
                c.post(f"/containers/{cid}/start").raise_for_status()
        except httpx.HTTPError as e:
            raise RunnerError(f"container start failed: {e}") from None
        return Handle(container_id=cid)

    def observe(self, directory: Path, handle: Handle) -> Observation:
        try:
            with self._client() as c:
                r = c.get(f"/containers/{handle.container_id}/json")
                if r.status_code == 404:
                    return Observation("exited", handle, None, None, "container no longer exists")
                r.raise_for_status()
                st = r.json().get("State", {})
        except httpx.HTTPError as e:
            return Observation("running", handle, error=f"engine unreachable: {e}")
        if st.get("Running"):
            return Observation("running", handle)
        return Observation("exited", handle, int(st.get("ExitCode", 0)), None, str(st.get("Error") or ""))

    def exit_fd(self, directory: Path, handle: Handle) -> int | None:
        return None  # the engine's event stream is not followed: container instances are polled

    async def stop(
        self, directory: Path, handle: Handle, grace: float, *, discard: bool = False, shim_end: int | None = None
    ) -> Observation:
        if shim_end is not None:
            os.close(shim_end)  # never given: exit_fd offers none

        def _stop() -> None:
            try:
                with self._client(timeout=grace + 10) as c:
                    c.post(f"/containers/{handle.container_id}/stop", params={"t": int(grace)})
                    c.delete(f"/containers/{handle.container_id}", params={"force": "true"})
            except httpx.HTTPError:
                pass

        await asyncio.to_thread(_stop)
        return Observation("exited", handle)

    def stop_many(
        self,
        stops: Sequence[tuple[Path, Handle, int | None]],
        grace: float,
        *,
        discard: bool,
        ended: Callable[[int, Observation], None],
    ) -> Coroutine[Any, Any, None]:
        return stop_each(self, stops, grace, discard=discard, ended=ended)

    def later_start(self, directory: Path, handle: Handle) -> Handle | None:
        return None  # a container is created by the start call itself: the record has its id

    def abandon(self, directory: Path) -> None:
        return None

    def start_reports(self) -> int | None:
        return None  # starts are polled

    def drain_reports(self) -> None:
        return None

    def signal_now(self, targets: Sequence[tuple[str, Target]], *, discard: bool) -> None:
        return None  # a container's stop is one request of its own

    def send_signals(self) -> None:
        return None

    def reap(self) -> None:
        return None

    def close(self) -> None:
        return None
