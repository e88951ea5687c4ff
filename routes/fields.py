"""Reading plain YAML/JSON values into rules, refusing with the field's path (pure).

Shared by the document model (`routes.model`) and the migration model (`facade.model`), so both
refuse the same way: `RuleError(field, message, value)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.errors import RuleError

# RFC 9110 token: header names and methods.
TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def type_name(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", int: "an integer",
            bool: "a boolean", float: "a number"}.get(type(value), type(value).__name__)


def mapping(value: object, where: str, allowed: Iterable[str]) -> Mapping[str, Any]:
    """`value` as a mapping whose keys are all in `allowed`; the top level is named `document`."""
    if not isinstance(value, Mapping):
        raise RuleError(where, f"must be a mapping, not {type_name(value)}", value)
    allowed_set = set(allowed)
    for key in value:
        if key not in allowed_set:
            raise RuleError(f"{where}.{key}" if where != "document" else str(key),
                            f"unknown field; allowed: {', '.join(sorted(allowed_set))}")
    return value
