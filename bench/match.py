"""Match cost against route-table size: is the lookup flat in the number of routes?

Builds tables of 10, 1,000 and 10,000 routes of mixed, realistic shapes (path prefixes, exact paths,
templates, exact and wildcard hosts, header predicates, method lists, a few regex routes and a
catch-all default), then times `table.match` over a fixed mix of requests that hit each shape
(and some that fall through to the default). Prints the mean time per match for each size and the
time to compile the 10,000-route document.

    python bench/match.py            # full run
    python bench/match.py --quick    # fewer rounds, for a smoke check
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from routes.compiler import compile_document
from routes.model import Document
from routes.table import RouteTable

Request = tuple[str, str, str, bytes, list[tuple[bytes, bytes]]]
BASE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"host", b"shop.example.com"), (b"user-agent", b"bench/1.0"), (b"accept", b"*/*"),
    (b"cookie", b"session=abc; theme=dark")]
REGEX_ROUTES: list[dict[str, Any]] = [
    {"name": "php", "match": {"path_regex": r"^/legacy/.*\.php$"}, "service": "legacy", "priority": 1},
    {"name": "jsp", "match": {"path_regex": r"\.jsp$"}, "service": "legacy", "priority": 1},
    {"name": "report", "match": {"path_regex": r"^/reports/\d{4}/\d{2}$"}, "service": "svc1"},
    {"name": "asset", "match": {"path_regex": r"^/static/.+\.(css|js)$"}, "service": "svc2"},
    {"name": "ver", "match": {"path_regex": r"^/api/v[0-9]+/health$"}, "service": "svc3", "priority": 2},
]


# The shape of the i-th route is SHAPE_ORDER[i % 20]: interleaved, so that even a 10-route table
# has prefix, exact, template and host routes, and the request mix stays alike across sizes.
SHAPE_ORDER = [0, 10, 14, 17, 18, 19, 1, 11, 15, 2, 3, 12, 16, 4, 5, 13, 6, 7, 8, 9]


def route_spec(i: int) -> tuple[dict[str, Any], Request]:
    """The i-th generated route and one request that it should answer."""
    svc = f"svc{i % 20}"
    shape = SHAPE_ORDER[i % 20]
    name = f"r{i}"
    headers = BASE_HEADERS
    if shape < 10:
        match: dict[str, Any] = {"path_prefix": f"/svc{i % 50}/res{i}"}
        if shape % 3 == 0:
            match["methods"] = ["GET", "POST"]
        req = ("GET", "shop.example.com", f"/svc{i % 50}/res{i}/items/42", b"page=2", headers)
    elif shape < 14:
        match = {"path": f"/api/v1/svc{i % 50}/items{i}"}
        req = ("GET", "shop.example.com", f"/api/v1/svc{i % 50}/items{i}", b"", headers)
    elif shape < 17:
        match = {"path_template": f"/api/v2/tenants/{{tenant}}/orders{i}/{{id}}"}
        req = ("PUT", "shop.example.com", f"/api/v2/tenants/acme/orders{i}/7", b"", headers)
    elif shape == 17:
        match = {"hosts": [f"app{i}.example.com"], "path_prefix": "/"}
        req = ("GET", f"app{i}.example.com", "/dashboard/today", b"", headers)
    elif shape == 18:
        match = {"hosts": [f"*.t{i}.example.com"], "path_prefix": f"/x{i}"}
        req = ("GET", f"acme.t{i}.example.com", f"/x{i}/list", b"", headers)
    else:
        match = {"path_prefix": f"/beta{i}", "headers": [{"name": "x-beta", "value": "1"}],
                 "query": [{"name": "v", "present": True}]}
        req = ("GET", "shop.example.com", f"/beta{i}/home", b"v=1&x=2",
               [*headers, (b"x-beta", b"1")])
    return {"name": name, "match": match, "service": svc}, req


def build(n: int) -> tuple[dict[str, Any], list[Request]]:
    services = [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]}] + \
        [{"name": f"svc{k}", "endpoints": [f"http://10.0.1.{k}:9000"]} for k in range(20)]
    routes: list[dict[str, Any]] = [{"name": "legacy-default", "match": {"path_prefix": "/"},
                                     "service": "legacy"}, *REGEX_ROUTES]
    requests: list[Request] = []
    for i in range(max(0, n - len(routes))):
        spec, req = route_spec(i)
        routes.append(spec)
        requests.append(req)
    # Requests for the regex routes and for paths that only the default answers.
    return {"services": services, "routes": routes}, requests


# Requests for the regex routes and for paths that only the default answers: 15% of the mix.
OTHER_REQUESTS: list[Request] = [
    ("GET", "shop.example.com", "/legacy/cart/view.php", b"", BASE_HEADERS),
    ("GET", "shop.example.com", "/reports/2024/05", b"", BASE_HEADERS),
    ("GET", "shop.example.com", "/nowhere/at/all", b"q=1", BASE_HEADERS)]


def time_matches(table: RouteTable, requests: list[Request], total: int) -> float:
    """Mean seconds per match over `total` lookups cycling through `requests` (best of 5 rounds)."""
    rng = random.Random(7)
    sample = [rng.choice(OTHER_REQUESTS if rng.random() < 0.15 else requests)
              for _ in range(min(total, 2000))]
    rounds = max(1, total // len(sample))
    match = table.match
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            for method, host, path, query, headers in sample:
                match(method, host, path, query, headers)
        best = min(best, (time.perf_counter() - start) / (rounds * len(sample)))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer lookups per size")
    args = parser.parse_args()
    total = 20_000 if args.quick else 200_000
    print(f"{'routes':>8}  {'per match':>10}  {'candidates':>10}")
    for n in (10, 1_000, 10_000):
        data, requests = build(n)
        table = compile_document(Document.parse(data), 1)
        # Request i was generated for route r{i}: a bench that measures wrong answers measures nothing.
        wrong = [i for i, r in enumerate(requests) if getattr(table.match(*r), "name", None) != f"r{i}"]
        if wrong:
            print(f"bench error: {len(wrong)} requests did not reach their route, e.g. {requests[wrong[0]]}",
                  file=sys.stderr)
            return 1
        cands = sum(len(table.candidates(r[1], r[2])) for r in requests) / len(requests)
        per = time_matches(table, requests, total)
        print(f"{len(table.routes):>8}  {per * 1e6:>8.2f}µs  {cands:>10.1f}")
    data, _ = build(10_000)
    start = time.perf_counter()
    document = Document.parse(data)
    parsed = time.perf_counter()
    compile_document(document, 1)
    done = time.perf_counter()
    print(f"10,000 routes: parse {(parsed - start) * 1e3:.0f} ms, compile {(done - parsed) * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
