"""The uvicorn internals Peel relies on, each checked for the shape Peel's code assumes (issue 10, item 6).

uvicorn is pinned to the minor version these were read against (pyproject.toml). A new uvicorn that
renames or reshapes one of them fails here, naming the Peel module that depends on it, instead of
in a socket test that hangs, or in production. Public options of `uvicorn.Config` are checked by
building Peel's own config (`uvicorn_config`) and loading it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn
from uvicorn.lifespan.off import LifespanOff
from uvicorn.lifespan.on import LifespanOn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from gateway.core.settings import Settings
from gateway.edge.listener import QuietServer, uvicorn_config
from gateway.edge.protocol import PeelHttpProtocol

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


class Transport(asyncio.Transport):
    """Enough of a transport for uvicorn's protocol to serve one request into `written`."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def loaded_config(**options: Any) -> uvicorn.Config:
    config = uvicorn.Config(asgi_app, http="httptools", lifespan="off", log_config=None, **options)
    config.load()
    return config


# --- gateway/edge/protocol.py: PeelHttpProtocol subclasses HttpToolsProtocol ------------------------

def test_the_protocol_peel_subclasses() -> None:
    needs(issubclass(PeelHttpProtocol, HttpToolsProtocol) and issubclass(HttpToolsProtocol, asyncio.Protocol),
          "HttpToolsProtocol is an asyncio.Protocol", PROTOCOL)
    # uvicorn's server (and drain.stop_accepting's factory) build protocols with these keywords
    needs({"config", "server_state", "app_state", "_loop"} <= set(params(HttpToolsProtocol.__init__)),
          "HttpToolsProtocol(config=, server_state=, app_state=, _loop=)", f"{PROTOCOL} and {DRAIN}")


@pytest.mark.parametrize(("method", "signature"), [
    # overridden by PeelHttpProtocol: uvicorn must still call them, with these arguments
    ("connection_made", ["transport"]),
    ("data_received", ["data"]),
    ("connection_lost", ["exc"]),
    ("on_headers_complete", []),
    ("on_response_complete", []),
    ("pause_writing", []),
    ("resume_writing", []),
    ("send_400_response", ["msg"]),
    # called by PeelHttpProtocol (and shutdown by drain.settle)
    ("handle_websocket_upgrade", []),
    ("_should_upgrade", []),
    ("_unset_keepalive_if_required", []),
    ("_start_asgi_task", ["cycle", "app"]),
    ("shutdown", []),
])
def test_the_protocol_methods_peel_overrides_or_calls(method: str, signature: list[str]) -> None:
    function = getattr(HttpToolsProtocol, method, None)
    needs(callable(function), f"HttpToolsProtocol.{method}", PROTOCOL)
    assert function is not None
    needs(params(function) == signature, f"HttpToolsProtocol.{method}({', '.join(signature)})", PROTOCOL)


def test_send_400_response_is_where_parser_refusals_go() -> None:
    # PeelHttpProtocol.send_400_response answers Peel's problem+json instead of uvicorn's text: only
    # while uvicorn's own data_received routes a parser error there.
    needs("send_400_response" in source(HttpToolsProtocol.data_received),
          "HttpToolsProtocol.data_received answers parser errors with send_400_response", PROTOCOL)


def test_on_response_complete_does_what_peels_copy_does() -> None:
    # PeelHttpProtocol.on_response_complete is uvicorn's with the keep-alive timer moved to
    # _EdgeTimer: if uvicorn's gains a step, the copy must gain it too.
    text = source(HttpToolsProtocol.on_response_complete)
    for step in ("server_state.total_requests += 1", "transport.is_closing()",
                 "_unset_keepalive_if_required()", "flow.resume_reading()", "self.pipeline.pop()",
                 "_start_asgi_task(cycle, app)", "timeout_keep_alive_task"):
        needs(step in text, f"HttpToolsProtocol.on_response_complete does `{step}`", PROTOCOL)
    needs(source(HttpToolsProtocol.on_response_complete).count("\n") < 30,
          "HttpToolsProtocol.on_response_complete grew: compare it with Peel's copy", PROTOCOL)


def test_a_served_request_has_the_state_peel_reads() -> None:
    """Drive uvicorn's own protocol through one request and look at what Peel's subclass touches."""

    async def serve() -> tuple[HttpToolsProtocol, Transport, Any]:
        config = loaded_config()
        state = ServerState()
        protocol = HttpToolsProtocol(config=config, server_state=state, app_state={})
        transport = Transport()
        protocol.connection_made(transport)
        needs(protocol in state.connections, "connection_made adds the protocol to server_state.connections",
              f"{PROTOCOL} (max_connections) and {DRAIN}")
        protocol.data_received(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n")
        cycle = protocol.cycle
        await asyncio.wait_for(asyncio.gather(*state.tasks), 30)
        return protocol, transport, cycle

    protocol, transport, cycle = asyncio.run(serve())
    for name, kind in (("parser", object), ("pipeline", deque), ("flow", FlowControl), ("loop", object),
                       ("server_state", ServerState), ("connections", set), ("timeout_keep_alive", int),
                       ("ws_protocol_class", object), ("transport", asyncio.BaseTransport),
                       ("config", uvicorn.Config), ("scope", dict)):
        needs(hasattr(protocol, name) and isinstance(getattr(protocol, name), kind),
              f"HttpToolsProtocol.{name} ({kind.__name__})", PROTOCOL)
    needs(getattr(protocol, "url", None) == b"/a?b", "HttpToolsProtocol.url holds the raw request target",
          f"{PROTOCOL} (peel.target)")
    needs(callable(getattr(protocol.parser, "feed_data", None))
          and callable(getattr(protocol.parser, "should_upgrade", None)),
          "HttpToolsProtocol.parser.feed_data / should_upgrade", PROTOCOL)
    needs(isinstance(cycle, RequestResponseCycle), "HttpToolsProtocol.cycle is a RequestResponseCycle",
          f"{PROTOCOL} and {DRAIN}")
    for name in ("disconnected", "response_started", "response_complete", "keep_alive"):
        needs(isinstance(getattr(cycle, name, None), bool), f"RequestResponseCycle.{name} (bool)",
              f"{PROTOCOL} and {DRAIN}")
    needs(isinstance(getattr(cycle, "message_event", None), asyncio.Event),
          "RequestResponseCycle.message_event", PROTOCOL)
    needs(getattr(cycle, "transport", None) is transport,
          "RequestResponseCycle.transport is what responses are written to (Peel swaps in its writer)",
          PROTOCOL)
    needs(cycle.response_complete and transport.written.startswith(b"HTTP/1.1 204"),
          "the request was served through cycle.transport", PROTOCOL)
    needs(protocol.server_state.total_requests == 1,
          "on_response_complete counts server_state.total_requests", PROTOCOL)
    needs(isinstance(protocol.flow.read_paused, bool) and callable(protocol.flow.pause_reading)
          and callable(protocol.flow.resume_reading),
          "FlowControl.read_paused / pause_reading / resume_reading", PROTOCOL)


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
    needs(inspect.signature(HttpToolsProtocol.connection_made).parameters.keys() >= {"transport"}
          and "is_ssl(transport)" in inspect.getsource(HttpToolsProtocol.connection_made),
          "the protocol sets scope scheme https from is_ssl(transport)", "gateway/dataplane/forward.py")

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
    needs("self.connections.add(self)" in source(HttpToolsProtocol.connection_made),
          "HttpToolsProtocol.connection_made registers the connection in server_state", INBOUND)
    needs("self.client = get_remote_addr(transport)" in source(HttpToolsProtocol.connection_made),
          "HttpToolsProtocol.connection_made sets self.client", f"{PROTOCOL} (the peer's address)")


def test_the_websocket_handshake_makes_its_scope_before_its_app_runs() -> None:
    # PeelHttpProtocol._upgrade puts the inbound listener's peer into the WebSocket scope right
    # after handle_websocket_upgrade: the handshake bytes are fed synchronously and handle_connect
    # builds `self.scope` (with an extensions dict) and only schedules the app.
    needs("protocol.data_received(" in source(HttpToolsProtocol.handle_websocket_upgrade)
          and "self.transport.set_protocol(protocol)" in source(HttpToolsProtocol.handle_websocket_upgrade),
          "handle_websocket_upgrade feeds the handshake to the WebSocket protocol at once", PROTOCOL)
    connect = source(WebSocketsSansIOProtocol.handle_connect)
    needs('self.scope' in connect and '"extensions": {' in connect and "create_task" in connect,
          "WebSocketsSansIOProtocol.handle_connect builds scope['extensions'], then schedules the app",
          PROTOCOL)
