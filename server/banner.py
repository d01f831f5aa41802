"""The lines ``lmgate serve`` prints once its models are loaded: where to send requests, under which
model names, and one request to paste into a shell.

    lmgate is ready
      OpenAI API  http://127.0.0.1:8000/v1   (also /health, /ready, /metrics)
      gRPC        127.0.0.1:50051   (lmgate.v1.Inference)
      model       tiny-chat, also called default: llamacpp, context 2048
      try         curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d '…'

Pure: built from the settings, the registry's pools and the ports actually bound.
"""

from __future__ import annotations

import json

from lmgate.server.placement.pool import ModelPool, ModelState
from lmgate.server.settings import ServerSettings

_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def url_host(bind: str) -> str:
    """Where a client on this machine reaches a server bound to ``bind`` (IPv6 in brackets)."""
    host = _ANY_ADDRESS.get(bind, bind)
    return f"[{host}]" if ":" in host else host


def render_banner(server: ServerSettings, pools: list[ModelPool], http_port: int, grpc_port: int | None) -> str:
    host = url_host(server.host)
    base = f"http://{host}:{http_port}"
    everywhere = "   (listening on every interface)" if server.host in _ANY_ADDRESS else ""
    lines = ["lmgate is ready", f"  OpenAI API  {base}/v1   (also /health, /ready, /metrics){everywhere}"]
    if grpc_port is not None:
        lines.append(f"  gRPC        {host}:{grpc_port}   (lmgate.v1.Inference)")
    if server.metrics_port is not None:
        lines.append(f"  metrics     http://{host}:{server.metrics_port}/metrics")
    lines += [f"  model       {_describe(pool)}" for pool in pools]
    serving = [p for p in pools if p.state is ModelState.READY or p.settings.lazy]
    if serving:
        name = next((a for a in serving[0].settings.aliases if a == "default"), serving[0].name)
        body = json.dumps({"model": name, "messages": [{"role": "user", "content": "Hello!"}]})
        key = " -H 'Authorization: Bearer YOUR_KEY'" if server.auth_enabled else ""
        headers = f"-H 'Content-Type: application/json'{key}"
        lines.append(f"  try         curl {base}/v1/chat/completions {headers} -d '{body}'")
    return "\n".join(lines)


def _describe(pool: ModelPool) -> str:
    aliases = f", also called {', '.join(pool.settings.aliases)}" if pool.settings.aliases else ""
    replicas = f" x{len(pool.replicas)}" if len(pool.replicas) > 1 else ""
    if pool.state is ModelState.READY and pool.loaded:
        state = f"context {pool.primary.info.context_length}"
    elif pool.state is ModelState.READY:  # discovered: its workers load as they are found
        state = f"discovering workers ({len(pool.replicas)} found, none serving yet)"
    elif pool.settings.lazy:
        state = "loads at its first request (lazy)"
    else:
        reason = pool.load_errors[0] if pool.load_errors else "not loaded"
        state = f"NOT SERVING: {reason}"
    return f"{pool.name}{aliases}: {pool.backend_kind}{replicas}, {state}"
