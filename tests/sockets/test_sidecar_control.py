"""Sidecars that follow the control plane, not the database (issue 14 item 3 and `server.source =
"control"`): a control plane `peel serve` with the CA; two `peel serve --role sidecar` processes
whose database URL points nowhere, joined with `peel join` (orders with `--advertise`). The orders
sidecar registers its inbound listener; the monolith's outbound listener reaches it by the service
name alone (a registry-only service, dialled with mTLS); a change committed on the control plane
reaches the monolith sidecar; with the control plane stopped the sidecar keeps serving, and a
restarted one serves from its snapshot; a sidecar stopping cleanly removes its registration. The
sidecars have no database: what they observed (the dependency graph's edges) reaches the control
plane's `GET /api/v1/graph` through `POST /api/v1/control/counts`."""

from __future__ import annotations

import json
import re
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from gateway.identity.ca import CertificateAuthority
from tests.access_log import records
from tests.sockets.conftest import wait_for
from tests.sockets.serve_harness import PeelServe, free_port
from tests.sockets.test_eastwest import Sidecar, _request
from tests.sockets.test_join import peel
from tests.sockets.test_mtls import TD
from tests.sockets.upstreams import ScriptedUpstream

NOWHERE = "postgresql://peel@127.0.0.1:1/never"  # a sidecar following the control plane never opens it


def graph_edges(url: str, token: str) -> dict[tuple[str, str], set[str]]:
    """The control plane's graph: (source, destination) -> the listeners that observed it."""
    request = urllib.request.Request(f"{url}/api/v1/graph", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        graph = json.load(answer)
    return {(e["source"], e["destination"]): set(e["observed_by"]) for e in graph["edges"]}


def test_sidecars_follow_the_control_plane_and_find_each_other_in_the_registry(tmp_path: Path) -> None:
    CertificateAuthority.init(tmp_path / "ca", TD, now=datetime.now(UTC))
    app = ScriptedUpstream()
    app.start()
    (tmp_path / "cp").mkdir()
    control = PeelServe(tmp_path / "cp", extra_settings=f'[identity]\nca_dir = "{tmp_path / "ca"}"\n')
    admin_token = control.upgrade_with_token()
    control.commit({"services": [{"name": "legacy", "endpoints": [app.url]}],
                    "routes": [{"name": "default", "match": {"path_prefix": "/"}, "service": "legacy"}]})
    control.start()
    url = f"http://127.0.0.1:{control.admin_port}"
    outbound, inbound, orders_outbound = free_port(), free_port(), free_port()
    sidecars = {}
    for name in ("monolith", "orders"):
        (tmp_path / name).mkdir()
        listeners = (f'[listeners.outbound]\nbind = "127.0.0.1:{outbound}"\n' if name == "monolith" else
                     f'[listeners.outbound]\nbind = "127.0.0.1:{orders_outbound}"\n'
                     f'[listeners.inbound]\nbind = "127.0.0.1:{inbound}"\nmtls = "permissive"\n'
                     f'app = "{app.url}"\nadvertise = "https://127.0.0.1:{inbound}"\n')
        state = tmp_path / name / "identity"
        sidecars[name] = Sidecar(tmp_path / name, url=NOWHERE, extra_settings=(
            f'role = "sidecar"\nsource = "control"\n{listeners}[identity]\nstate_dir = "{state}"\n'))
        token = peel("join-token", "create", "--service", name, "--config", str(control.config)).stdout
        peel("join", "--token", token.strip(), "--control", url, "--config", str(sidecars[name].config))
    monolith, orders = sidecars["monolith"], sidecars["orders"]
    monolith.ports, orders.ports = (outbound,), (inbound, orders_outbound)
    store = control.store()
    try:
        orders.start()
        wait_for(lambda: [r.url for r in store.registrations()] == [f"https://127.0.0.1:{inbound}"], 30,
                 "the orders sidecar to register its inbound listener")
        # what an operator sees: the document's endpoints and the registered one, with its source
        listed = peel("services", "list", "--admin", url, "--token", admin_token).stdout.splitlines()
        assert [line.split() for line in listed] == [
            ["NAME", "ENDPOINTS", "SOURCE"], ["legacy", app.url, "document"],
            ["orders", f"https://127.0.0.1:{inbound}", "registered", f"spiffe://{TD}/svc/orders"]]
        monolith.start()
        # orders is known by its registration only: the monolith's outbound dials it with mTLS
        wait_for(lambda: _request(outbound, "GET", "http://orders/hello")[0] == 200, 30,
                 "the monolith sidecar to reach orders by name")
        seen = app.seen[-1]
        assert seen.target == "/hello"
        access = orders.tmp / "access.log"
        wait_for(lambda: records(access) != [], 10, "the access log line")
        line = records(access)[-1]
        assert line["peer"] == f"spiffe://{TD}/svc/monolith"
        # both sidecars saw the call (the monolith's outbound, orders' inbound listener) and, having
        # no database, reported it to the control plane, whose graph shows it
        wait_for(lambda: graph_edges(url, admin_token).get(("monolith", "orders")) == {"outbound", "inbound"},
                 30, "the sidecars' edges in the control plane's graph")

        # a change on the control plane: a new service, reached through the monolith within seconds
        assert _request(outbound, "GET", "http://payments/x")[0] != 200
        control.commit({"services": [{"name": "legacy", "endpoints": [app.url]},
                                     {"name": "payments", "endpoints": [app.url]}],
                        "routes": [{"name": "default", "match": {"path_prefix": "/"}, "service": "legacy"}]})
        wait_for(lambda: _request(outbound, "GET", "http://payments/x")[0] == 200, 10,
                 "version 2 on the monolith sidecar")

        # the control plane goes away: both sidecars keep serving
        assert control.stop() == 0
        assert _request(outbound, "GET", "http://orders/after")[0] == 200
        assert _request(outbound, "GET", "http://payments/after")[0] == 200
        wait_for(lambda: "control plane unreachable" in monolith.log.read_text(), 60, "the logged outage")

        # a restarted sidecar, the control plane still down, serves its snapshot
        assert monolith.stop() == 0
        monolith.start()
        assert _request(outbound, "GET", "http://payments/restarted")[0] == 200
        assert _request(outbound, "GET", "http://orders/restarted")[0] == 200
        assert "loaded from the snapshot" in monolith.log.read_text()
        # NOWHERE's host and port, ending there: not the control plane's own address (say :18609)
        nowhere = urlsplit(NOWHERE)
        log = monolith.log.read_text()
        assert "sqlite" not in log and not re.search(re.escape(f"{nowhere.hostname}:{nowhere.port}") + r"\b",
                                                     log)

        # the control plane is back: the sidecars reconnect; orders stopping cleanly deregisters
        control.start()
        wait_for(lambda: "control plane reachable again" in orders.log.read_text(), 30, "the reconnection")
        assert [r.url for r in store.registrations()] == [f"https://127.0.0.1:{inbound}"]
        assert orders.stop() == 0
        assert store.registrations(expired=True) == []
    finally:
        store.close()
        for sidecar in (monolith, orders):
            if sidecar.process is not None:
                sidecar.stop()
        if control.process is not None:
            control.stop()
        app.stop()
