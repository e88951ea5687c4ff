"""The uvicorn internals Peel relies on, each checked for the shape Peel's code assumes (issue 10, item 6).

uvicorn is pinned to the minor version these were read against (pyproject.toml). A new uvicorn that
renames or reshapes one of them fails here, naming the Peel module that depends on it, instead of
in a socket test that hangs, or in production. Public options of `uvicorn.Config` are checked by
building Peel's own config (`uvicorn_config`) and loading it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.lifespan.off import LifespanOff
from uvicorn.lifespan.on import LifespanOn
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from gateway.core.settings import Settings
from gateway.edge.listener import QuietServer, uvicorn_config
from gateway.edge.protocol import PeelHttpProtocol
from tests.fakes.served import until_served
from tests.fakes.transport import RecordingTransport

PROTOCOL = "gateway/edge/protocol.py (PeelHttpProtocol)"
DRAIN = "gateway/edge/drain.py"
LISTENER = "gateway/edge/listener.py"
SERVE = "gateway/server/serve.py"


def needs(condition: object, what: str, user: str) -> None:
    assert condition, (f"uvicorn {uvicorn.__version__} changed an internal Peel relies on: {what} "
                       f"(used by {user})")


def params(function: Callable[..., Any]) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


def source(function: Callable[..., Any]) -> str:
    return inspect.getsource(function)


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


Transport = RecordingTransport


def loaded_config(**options: Any) -> uvicorn.Config:
    config = uvicorn.Config(asgi_app, http="httptools", lifespan="off", log_config=None, **options)
    config.load()
    return config


# --- gateway/edge/protocol.py: Peel's own protocol, run by uvicorn's server ------------------------

def test_uvicorns_server_builds_protocols_as_peels_takes_them() -> None:
    # uvicorn's server (and drain.stop_accepting's factory) build the protocol class with these
    # keywords; PeelHttpProtocol takes the same.
    needs("server_state=self.server_state" in source(uvicorn.Server.startup)
          and "config=config" in source(uvicorn.Server.startup),
          "Server.startup builds config.http_protocol_class(config=, server_state=, app_state=)",
          f"{PROTOCOL} and {DRAIN}")
    # by keyword, as uvicorn does (a compiled class's signature cannot be read: it is built instead)
    loop = asyncio.new_event_loop()
    try:
        protocol = PeelHttpProtocol(config=loaded_config(), server_state=ServerState(), app_state={},
                                    _loop=loop)
    finally:
        loop.close()
    assert protocol.app_state == {}
    needs(params(WebSocketsSansIOProtocol.__init__)[:3] == ["config", "server_state", "app_state"],
          "WebSocketsSansIOProtocol(config=, server_state=, app_state=)", f"{PROTOCOL} (_upgrade)")


def test_the_flow_control_peel_uses() -> None:
    transport = Transport()
    flow = FlowControl(transport)
    for name in ("read_paused", "write_paused"):
        needs(getattr(flow, name, None) is False, f"FlowControl.{name} (bool)", f"{PROTOCOL} and cycle.py")
    for name in ("pause_reading", "resume_reading", "pause_writing", "resume_writing", "drain"):
        needs(callable(getattr(flow, name, None)), f"FlowControl.{name}()", f"{PROTOCOL} and cycle.py")
    needs(isinstance(HIGH_WATER_LIMIT, int) and HIGH_WATER_LIMIT > 0,
          "flow_control.HIGH_WATER_LIMIT (int)", PROTOCOL)


def test_a_request_served_by_peels_protocol_has_the_state_peel_and_the_drain_read() -> None:
    """Drive PeelHttpProtocol through one request with uvicorn's config and server state."""

    async def serve() -> tuple[PeelHttpProtocol, Transport, Any]:
        config = loaded_config()
        state = ServerState()
        protocol = PeelHttpProtocol(config=config, server_state=state, app_state={})
        transport = Transport()
        protocol.connection_made(transport)
        assert protocol in state.connections
        protocol.data_received(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n")
        cycle = protocol.cycle
        await until_served(state)
        return protocol, transport, cycle

    protocol, transport, cycle = asyncio.run(serve())
    scope = cycle.scope
    assert (scope["method"], scope["path"], scope["query_string"]) == ("GET", "/a", b"b")
    assert scope["extensions"]["peel.target"] == b"/a?b" and scope["headers"] == [(b"host", b"x")]
    for name in ("disconnected", "response_started", "response_complete", "keep_alive"):
        assert isinstance(getattr(cycle, name, None), bool), name  # read by drain.py and inbound.py
    assert cycle.response_complete and transport.written.startswith(b"HTTP/1.1 204")
    assert protocol.server_state.total_requests == 1


# --- gateway/edge/drain.py and gateway/server/serve.py: the server's state ---------------------------

def test_server_state_fields() -> None:
    state = ServerState()
    for name, kind in (("total_requests", int), ("connections", set), ("tasks", set),
                       ("default_headers", list)):
        needs(isinstance(getattr(state, name, None), kind), f"ServerState.{name} ({kind.__name__})",
              f"{DRAIN} and {PROTOCOL}")


def test_the_server_attributes_peel_reads_and_sets() -> None:
    server = QuietServer(loaded_config())
    for name in ("started", "should_exit", "force_exit"):
        needs(getattr(server, name, None) is False, f"Server.{name} (bool flag)", SERVE)
    needs(isinstance(server.server_state, ServerState), "Server.server_state", DRAIN)
    needs(params(uvicorn.Server.serve) == ["sockets"], "Server.serve(sockets=)", SERVE)
    # set in startup/_serve, read by drain.stop_accepting
    needs("self.servers = " in source(uvicorn.Server.startup), "Server.servers (the listening servers)",
          DRAIN)
    needs("self.lifespan = " in source(uvicorn.Server._serve), "Server.lifespan", DRAIN)
    needs("lifespan.state" in source(uvicorn.Server.startup),
          "Server.startup builds protocols with app_state=self.lifespan.state", DRAIN)
    for lifespan in (LifespanOff, LifespanOn):
        needs(isinstance(lifespan(loaded_config()).state, dict), f"{lifespan.__name__}.state", DRAIN)


def test_capture_signals_is_the_servers_signal_hook() -> None:
    # QuietServer overrides capture_signals to leave signals to Peel's own handlers.
    needs("capture_signals()" in source(uvicorn.Server.serve),
          "Server.serve installs signals via capture_signals", LISTENER)
    needs(params(uvicorn.Server.capture_signals) == [], "Server.capture_signals()", LISTENER)


def test_the_tick_rebuilds_default_headers_from_encoded_headers() -> None:
    # drain.close_after_response appends `Connection: close` to both; the tick must keep it.
    text = source(uvicorn.Server.on_tick)
    needs("server_state.default_headers" in text and "config.encoded_headers" in text,
          "Server.on_tick rebuilds server_state.default_headers from config.encoded_headers", DRAIN)


def test_shutdown_reads_the_grace_period_when_it_runs() -> None:
    # serve.Runtime._drain sets config.timeout_graceful_shutdown to what is left of the grace period.
    needs("self.config.timeout_graceful_shutdown" in source(uvicorn.Server.shutdown),
          "Server.shutdown reads config.timeout_graceful_shutdown", SERVE)
    needs("connection.shutdown()" in source(uvicorn.Server.shutdown),
          "Server.shutdown calls each connection's shutdown()", DRAIN)


def test_peels_own_config_loads_and_keeps_its_protocol_classes() -> None:
    settings = Settings()
    config = uvicorn_config(asgi_app, settings, listener="public")
    config.load()
    needs(isinstance(config.http, type) and issubclass(config.http, PeelHttpProtocol),
          "Config.http keeps the protocol class it was given", f"{SERVE} (apply_limits)")
    needs(config.http_protocol_class is config.http, "Config.http_protocol_class is the given class",
          f"{DRAIN} (stop_accepting)")
    needs(config.ws_protocol_class is WebSocketsSansIOProtocol,
          'ws="websockets-sansio" is WebSocketsSansIOProtocol', f"{LISTENER} and {DRAIN}")
    needs(isinstance(config.encoded_headers, list), "Config.encoded_headers (list)", DRAIN)
    needs(config.lifespan_class is LifespanOff, 'lifespan="off" on the data plane', LISTENER)
    admin = uvicorn_config(asgi_app, settings, listener="admin")
    admin.load()
    needs(admin.ws_protocol_class is None, 'ws="none" on the admin listener', LISTENER)


def test_the_ssl_context_factory_gives_the_listening_context_and_https_scopes() -> None:
    import ssl

    from uvicorn.protocols.utils import is_ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    calls: list[object] = []

    def factory(config: object, default: object) -> ssl.SSLContext:
        calls.append(config)
        return context

    config = uvicorn_config(asgi_app, Settings(), listener="public", ssl_context_factory=factory)
    config.load()
    tls = "gateway/edge/tls.py (TlsListener.factory)"
    needs(config.ssl is context and calls == [config],
          "Config.load() calls ssl_context_factory(config, default) once; Config.ssl is its context "
          "(passed to loop.create_server)", tls)

    class Transport:
        def get_extra_info(self, name: str) -> object:
            return context if name == "sslcontext" else None

    needs(is_ssl(Transport()), 'is_ssl reads get_extra_info("sslcontext")', tls)  # type: ignore[arg-type]


def test_the_websocket_protocol_drain_closes() -> None:
    for name in ("handshake_complete", "close_sent"):
        needs(f"self.{name} = False" in source(WebSocketsSansIOProtocol.__init__),
              f"WebSocketsSansIOProtocol.{name}", DRAIN)
    needs(params(WebSocketsSansIOProtocol.shutdown) == [], "WebSocketsSansIOProtocol.shutdown()", DRAIN)


INBOUND = "gateway/edge/inbound.py (InboundListener)"


def test_serve_with_no_sockets_creates_no_listening_server() -> None:
    # The inbound listener accepts on its socket itself and hands connections to the server's
    # protocol class; `serve(sockets=[])` must then run the server without binding anything.
    startup = source(uvicorn.Server.startup)
    needs("if sockets is not None:" in startup and "for sock in sockets:" in startup,
          "Server.startup(sockets=[]) makes no listening server", INBOUND)
    needs("self.servers: list" in startup or "self.servers = []" in startup,
          "Server.startup keeps its listening servers in self.servers", INBOUND)
    needs("server_state=self.server_state" in startup and "app_state=self.lifespan.state" in startup,
          "Server.startup builds protocols from config.http_protocol_class with server_state and "
          "app_state=lifespan.state", INBOUND)


def test_the_websocket_handshake_makes_its_scope_before_its_app_runs() -> None:
    # PeelHttpProtocol._upgrade puts the inbound listener's peer into the WebSocket scope right
    # after feeding it the handshake: the bytes are parsed synchronously and handle_connect builds
    # `self.scope` (with an extensions dict) and only schedules the app.
    connect = source(WebSocketsSansIOProtocol.handle_connect)
    needs('self.scope' in connect and '"extensions": {' in connect and "create_task" in connect,
          "WebSocketsSansIOProtocol.handle_connect builds scope['extensions'], then schedules the app",
          PROTOCOL)


NAMES_PROBE = """
import json, sys
if sys.argv[1] == "peel":
    import gateway  # installs gateway.core.lazy_uvicorn first
import uvicorn
import uvicorn.config, uvicorn.server
loaded = sorted(m for m in ("click", "uvicorn.main", "multiprocessing") if m in sys.modules)
names = {n: f"{getattr(uvicorn, n).__module__}.{getattr(uvicorn, n).__name__}"
         for n in ("Config", "Server", "run")}
print(json.dumps([loaded, names, uvicorn.__version__, sorted(uvicorn.__all__), type(uvicorn.main).__name__]))
"""


def _names(mode: str) -> list[Any]:
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", NAMES_PROBE, mode], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    result: list[Any] = json.loads(out)
    return result


def test_the_package_without_its_command_line_has_the_packages_names() -> None:
    # gateway.core.lazy_uvicorn: the serving process does not load the `uvicorn` command (click,
    # the supervisors), and every name uvicorn's __init__ exports is still there, the same object
    from gateway.core.lazy_uvicorn import NAMES
    plain, peel = _names("plain"), _names("peel")
    needs(set(plain[3]) | {"__version__"} == set(NAMES), "the names uvicorn/__init__.py exports",
          "gateway/core/lazy_uvicorn.py")
    assert plain[0] == ["click", "multiprocessing", "uvicorn.main"]
    assert peel[0] == []
    assert peel[1:] == plain[1:]
