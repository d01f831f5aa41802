"""A fake Kubernetes API server for EndpointSlices that speaks the real list and watch protocol.

It serves ``GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices`` on 127.0.0.1 (Starlette
under uvicorn, in a background thread):
- a list: ``{"kind": "EndpointSliceList", "metadata": {"resourceVersion": …}, "items": […]}`` of the
  slices matching ``labelSelector`` (``kubernetes.io/service-name=<service>`` only);
- ``watch=true&resourceVersion=N``: a chunked stream of JSON lines, ``{"type": "ADDED" | "MODIFIED" |
  "DELETED" | "ERROR", "object": …}``: the events after N, then each new one as it happens. A
  version older than the server keeps history for gets one ``ERROR`` event with a 410 ``Status``
  (``expire()`` forgets the history and sends that to every open watch, as an API server whose
  watch cache moved on does). ``timeoutSeconds`` ends a watch cleanly, as the real one does.
Requests must carry ``Authorization: Bearer <token>`` (the kubeconfig's). The test thread changes
the slices (``put``, ``delete``), takes the server down (``stop``) and brings it up on the same port
(``start``); the slices outlive a restart, as etcd does.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from server_helpers import free_port

TOKEN = "fake-service-account-token"
SERVICE_LABEL = "kubernetes.io/service-name"


def endpoint_slice(name: str, service: str, port: int, ready: dict[str, bool], port_name: str = "grpc") -> dict:
    """An EndpointSlice of ``service`` whose endpoints are the addresses of ``ready`` (address → ready)."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": name, "namespace": "lmgate", "labels": {SERVICE_LABEL: service}},
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [address], "conditions": {"ready": ok, "serving": ok, "terminating": False}}
            for address, ok in ready.items()
        ],
    }  # fmt: skip


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}  # fmt: skip


class FakeKubeApi:
    """``with FakeKubeApi() as api:`` serves until the block ends; ``api.kubeconfig(tmp)`` points a client at it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.slices: dict[str, dict] = {}
        self.version = 1
        self.history: list[tuple[int, str, dict]] = []
        self.oldest = 1
        """Watches from a version below this get 410 Gone."""
        self.lists = 0
        self.watches = 0
        self._watchers: set[asyncio.Queue[tuple[str, dict]]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[
            Route("/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", self._endpointslices),
        ])  # fmt: skip

    def kubeconfig(self, directory: Path, namespace: str = "lmgate") -> Path:
        path = directory / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "gateway", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "gateway", "namespace": namespace}}],
        }))  # fmt: skip
        return path

    # -- the test thread's side ------------------------------------------------------------------

    def put(self, obj: dict) -> None:
        """Create or replace a slice: ADDED or MODIFIED to every watch."""
        self._call(self._change, "MODIFIED" if obj["metadata"]["name"] in self.slices else "ADDED", obj)

    def delete(self, name: str) -> None:
        self._call(self._change, "DELETED", self.slices[name])

    def expire(self) -> None:
        """Forget the event history: every open watch gets a 410 Gone ERROR event and ends."""
        self._call(self._expire)

    def start(self) -> FakeKubeApi:
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     timeout_graceful_shutdown=1))  # fmt: skip
        loop = asyncio.new_event_loop()
        server = self._server
        self._thread = threading.Thread(target=lambda: loop.run_until_complete(server.serve()), name="fake-kube-api",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        while not server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the fake Kubernetes API server failed to start")
            time.sleep(0.01)
        self._loop = loop
        return self

    def stop(self) -> None:
        """The API server goes away: its connections are reset (open watches included) and new ones refused."""
        server, thread, loop = self._server, self._thread, self._loop
        if server is None or thread is None or loop is None:
            return
        server.should_exit = True  # uvicorn closes its listening socket, then waits for its connections
        while thread.is_alive():
            loop.call_soon_threadsafe(self._reset_connections, server)
            thread.join(timeout=0.05)
        self._server, self._thread, self._loop = None, None, None
        self._watchers.clear()

    @staticmethod
    def _reset_connections(server: uvicorn.Server) -> None:
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()

    def __enter__(self) -> FakeKubeApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, function: Any, *args: Any) -> None:
        """Run ``function(*args)`` on the server's loop (or here while it is down) and wait for it."""
        if self._loop is None:
            function(*args)
            return
        done = threading.Event()

        def run() -> None:
            try:
                function(*args)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(timeout=30):
            raise RuntimeError("the fake API server's loop did not answer")

    # -- the server's loop -----------------------------------------------------------------------

    def _change(self, kind: str, obj: dict) -> None:
        self.version += 1
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["resourceVersion"] = str(self.version)
        if kind == "DELETED":
            del self.slices[obj["metadata"]["name"]]
        else:
            self.slices[obj["metadata"]["name"]] = obj
        self.history.append((self.version, kind, obj))
        for queue in self._watchers:
            queue.put_nowait((kind, obj))

    def _expire(self) -> None:
        self.oldest = self.version + 1
        self.history.clear()
        gone = _status(410, "Expired", "too old resource version")
        for queue in self._watchers:
            queue.put_nowait(("ERROR", gone))

    def _matching(self, selector: str | None) -> list[dict]:
        key, _, value = (selector or "").partition("=")
        return [s for s in self.slices.values() if not key or s["metadata"]["labels"].get(key) == value]

    async def _endpointslices(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse(_status(401, "Unauthorized", "Unauthorized"), status_code=401)
        params = request.query_params
        selector = params.get("labelSelector")
        if params.get("watch") not in ("true", "1"):
            self.lists += 1
            return JSONResponse({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                                 "metadata": {"resourceVersion": str(self.version)},
                                 "items": self._matching(selector)})  # fmt: skip
        self.watches += 1
        since = int(params.get("resourceVersion") or self.version)
        timeout = float(params.get("timeoutSeconds") or 1800)
        return StreamingResponse(self._watch(since, selector, timeout), media_type="application/json")

    async def _watch(self, since: int, selector: str | None, timeout_s: float) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            if since < self.oldest - 1:
                yield _line("ERROR", _status(410, "Expired", f"too old resource version: {since}"))
                return
            for version, kind, obj in self.history:
                if version > since:
                    queue.put_nowait((kind, obj))
            key, _, value = (selector or "").partition("=")
            async with asyncio.timeout(timeout_s):
                while True:
                    kind, obj = await queue.get()
                    if kind != "ERROR" and key and obj["metadata"]["labels"].get(key) != value:
                        continue
                    yield _line(kind, obj)
                    if kind == "ERROR":
                        return
        except TimeoutError:
            return  # timeoutSeconds: the watch ends cleanly
        finally:
            self._watchers.discard(queue)


def _line(kind: str, obj: dict) -> bytes:
    return (json.dumps({"type": kind, "object": obj}) + "\n").encode()
