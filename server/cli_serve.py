"""``lmgate serve``: settings from the flags and the config file, the ports checked, then uvicorn (with the
gRPC server in the app's lifespan) until SIGTERM / SIGINT, and a banner once the models are loaded.

With neither ``--model`` nor ``--config`` it serves the embedded model, ``models/tiny-chat.gguf``,
found beside the installed package: in a checkout (``pip install -e .``, ``make install``) that is
the repository's copy. A wheel does not carry the model (it is not package data), so there the
command says to pass ``--model`` or ``--config``; the container images pass ``--model``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from lmgate.server.cli_errors import CliError, UsageError
from lmgate.server.http.header_deadline import http_protocol
from lmgate.server.placement.drain import Drain
from lmgate.server.settings import ConfigError, Settings, model_name_from_path, read_config_file, validate_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

EMBEDDED_MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny-chat.gguf"
"""The default model: the repository's models/tiny-chat.gguf, beside server/ (absent from a wheel)."""


def run_serve(args: argparse.Namespace) -> None:
    settings = settings_from_args(args)
    check_ports(settings)
    serve_forever(settings)


def embedded_model(path: Path = EMBEDDED_MODEL) -> Path:
    """The embedded model's file; UsageError where this copy of lmgate has none (a wheel, an image)."""
    if not path.is_file():
        raise UsageError(
            f"no model given, and this lmgate has no embedded model ({path} is not there: it ships with the "
            "repository, not with the wheel): pass --model FILE.gguf or --config FILE.yaml"
        )
    return path


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The config file's settings (relative paths against its directory) or a one-model config for
    ``--model`` (or the embedded model), with the server flags on top; ConfigError when invalid."""
    flags = ("threads", "n_ctx", "max_seqs", "max_model_len")
    model_flags = [f"--{f.replace('_', '-')}" for f in flags if getattr(args, f) is not None]
    model_flags += ["--no-prefix-cache"] if args.no_prefix_cache else []
    model_flags += ["--lora"] if args.lora else []
    if args.config is not None and model_flags:
        verb = "applies" if len(model_flags) == 1 else "apply"
        raise UsageError(f"{', '.join(model_flags)} {verb} to --model only: with --config, set it in the model's "
                         f"entry of {args.config} (docs/configuration.md)")  # fmt: skip
    if args.config is not None:
        raw = read_config_file(args.config)
    else:
        path = args.model if args.model is not None else embedded_model()
        model: dict[str, object] = {
            "name": model_name_from_path(path),
            "aliases": ["default"],
            "backend": "llamacpp",
            "gguf": str(path),
        }
        for flag in flags:
            if getattr(args, flag) is not None:
                model["n_threads" if flag == "threads" else flag] = getattr(args, flag)
        if args.no_prefix_cache:
            model["prefix_cache"] = False
        if args.lora:
            model["lora_adapters"] = [lora_flag(value) for value in args.lora]
        raw = {"models": [model]}
    server = raw.setdefault("server", {})
    if not isinstance(server, dict):
        raise ConfigError(f"{args.config}: server: expected a mapping of settings, got {type(server).__name__}")
    for flag, key in (("host", "host"), ("port", "http_port"), ("grpc_port", "grpc_port"), ("log_level", "log_level")):
        if getattr(args, flag) is not None:
            server[key] = getattr(args, flag)
    if args.no_grpc:
        server["grpc_port"] = None
    base = args.config.parent if args.config is not None else None
    return validate_settings(raw, source=str(args.config or "command line"), base_dir=base)


def lora_flag(value: str) -> dict[str, str]:
    """``--lora [NAME=]PATH`` as a ``lora_adapters`` entry; the name defaults to the file's, less ``.lora``."""
    name, named, path = value.partition("=")
    if not named or "/" in name:  # a path with "=" in it, no name
        name, path = "", value
    name = name or model_name_from_path(Path(path)).removesuffix(".lora")
    return {"name": name, "path": path}


def check_ports(settings: Settings) -> None:
    """CliError naming the port and the flag to change when one the server needs is taken now (before any
    engine starts, and before gRPC's own bind would log its errors)."""
    s = settings.server
    wanted = [("HTTP", s.http_port, "--port (server.http_port)"),
              ("gRPC", s.grpc_port, "--grpc-port (server.grpc_port), or --no-grpc"),
              ("metrics", s.metrics_port, "server.metrics_port")]  # fmt: skip
    for what, number, fix in wanted:
        if number:  # None: off; 0: any free port
            _check_free(s.host, number, what, fix)


def _check_free(host: str, number: int, what: str, fix: str) -> None:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, number, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise CliError(f"cannot listen on host {host!r}: {exc.strerror} (--host, server.host)") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            why = {
                errno.EADDRINUSE: "the port is in use by another process",
                errno.EACCES: "permission denied (ports below 1024 need privileges)",
                errno.EADDRNOTAVAIL: f"this machine has no address {host}",
            }.get(exc.errno or 0, exc.strerror)
            raise CliError(f"cannot serve {what} on {host}:{number}: {why}: choose another with {fix}") from None


def serve_forever(settings: Settings) -> None:
    from lmgate.server.app import create_app

    level = settings.server.log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One JSON line per request on stdout (server/metrics.py), instead of uvicorn's access log.
    access = logging.getLogger("lmgate.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
    # One JSON line per replica a discovered pool adds or removes, on stderr (server/placement/discovery.py).
    discovery = logging.getLogger("lmgate.discovery")
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(logging.Formatter("%(message)s"))
    discovery.addHandler(to_stderr)
    discovery.propagate = False
    server: DrainingServer | None = None

    def fatal(reason: str) -> None:  # no model can ever load: stop, and exit non-zero below
        assert server is not None
        server.fatal = reason
        server.should_exit = True

    def ready() -> None:
        assert server is not None
        server.models_ready()

    app = create_app(settings, on_fatal=fatal, on_ready=ready)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.http_port,
        log_level=level,
        access_log=False,
        http=http_protocol(settings.server.header_timeout_s),
        # The drain (DrainingServer) already waited for in-flight requests: don't wait a second time.
        timeout_graceful_shutdown=1,
    )
    server = DrainingServer(config, app, banner=level in ("debug", "info"))
    server.run()
    if server.fatal is not None:
        raise CliError(f"cannot serve: {server.fatal}")


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM / SIGINT drains (server/placement/drain.py) before exiting; a second
    one exits at once. Prints the banner (server/banner.py) once it listens and the models are loaded,
    instead of uvicorn's "running on" line, which comes before they are."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, *, banner: bool) -> None:
        super().__init__(config)
        self._app = app
        self._drain: Drain = app.state.drain
        self._banner_due = banner
        self._models_ready = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self.fatal: str | None = None
        """Why the server stopped on its own (no model can load), if it did."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        self._print_banner_when_due()

    def _log_started_message(self, listeners: Sequence[socket.SocketType]) -> None:
        """NOTE: uvicorn's hook for its "Uvicorn running on …" line: the banner says it, after loading."""

    def models_ready(self) -> None:
        """Called on the event loop once the eager models have loaded."""
        self._models_ready = True
        self._print_banner_when_due()

    def _print_banner_when_due(self) -> None:
        if not (self._banner_due and self._models_ready and self.started):
            return
        from lmgate.server.banner import render_banner

        self._banner_due = False
        state = self._app.state
        http_port = self.servers[0].sockets[0].getsockname()[1]
        grpc_port = state.grpc.port if state.grpc is not None else None
        banner = render_banner(state.settings.server, list(state.models.pools.values()), http_port, grpc_port)
        print(banner, file=sys.stderr, flush=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        await self._drain.run()
        self.should_exit = True
