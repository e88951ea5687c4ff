"""The demo's starting document: everything still answered by the monolith.

Two services (`legacy` → the monolith, `orders` → the new service) and two routes that both send
traffic to `legacy`; the demo then peels the `orders` route onto the `orders` service.
"""

from __future__ import annotations

from typing import Any

from routes.model import Document


def sample_document(monolith_url: str, orders_url: str) -> dict[str, Any]:
    """The document as `peel apply -f` takes it (plain dicts, canonical order)."""
    data = {
        "services": [{"name": "legacy", "endpoints": [monolith_url]},
                     {"name": "orders", "endpoints": [orders_url]}],
        "routes": [{"name": "legacy-default", "match": {"path_prefix": "/"}, "service": "legacy"},
                   {"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy"}],
    }
    # Parsing here means a mistake in the sample fails in the demo's own process, with the field.
    return Document.parse(data).to_dict()


def sample_yaml(monolith_url: str, orders_url: str) -> str:
    import yaml  # here: the CLI (and so `peel serve`) imports this module, and reads no YAML

    header = ("# Peel demo: the starting rules. Everything still goes to the monolith (`legacy`);\n"
              "# `peel routes set orders --service orders ...` peels /orders off it.\n")
    return header + yaml.safe_dump(sample_document(monolith_url, orders_url), sort_keys=False)
