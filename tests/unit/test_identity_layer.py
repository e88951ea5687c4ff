"""gateway.identity's place in the import contract (pyproject `[tool.importlinter]`): below the
upstream pool and the edge, which will use it for mTLS; above gateway.core."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_layering import lint_imports, plant, tree  # noqa: F401 - `tree` is a fixture


@pytest.mark.parametrize(("module", "line"), [
    ("gateway.identity.certs", "import gateway.upstream.pool"),
    ("gateway.identity.ca", "import gateway.edge.protocol"),
    ("gateway.core.settings", "import gateway.identity.spiffe"),
])
def test_identity_is_below_upstream_and_edge_and_above_core(tree: Path, module: str,  # noqa: F811
                                                            line: str) -> None:
    plant(tree, module, line)
    done = lint_imports(tree)
    assert done.returncode != 0, done.stdout
    assert "Peel's packages, top to bottom BROKEN" in done.stdout and module in done.stdout, done.stdout
