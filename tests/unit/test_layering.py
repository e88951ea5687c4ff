"""The import direction of Peel's packages (issue 10, item 4): `[tool.importlinter]` in pyproject.toml.

The first test runs `lint-imports` on the tree as it is; the others copy the tree, plant one
violation of each contract and check that `lint-imports` refuses it, so a contract that stopped
checking anything (a misspelt package, a layer dropped from the list) fails here too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("gateway", "routes", "facade")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first, so the copy's packages shadow the editable install of the real tree.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(root / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the three packages and the contracts, to plant violations in."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def plant(tree: Path, module: str, line: str) -> None:
    path = tree / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_tree_keeps_its_import_contracts() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_the_copy_is_what_gets_checked(tree: Path) -> None:
    # Without this, the planted tests below could pass by checking the real tree (and failing on
    # some real violation) instead of the copy.
    done = lint_imports(tree)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("module", "line", "contract"), [
    # routes/ is the bottom: not even gateway.core
    ("routes.matcher", "import gateway.core.errors", "routes/ imports neither gateway/ nor facade/"),
    ("routes.table", "import facade.decision", "routes/ imports neither gateway/ nor facade/"),
    # a pure facade module that loads the pool, directly or through another module
    ("facade.bucketing", "import gateway.upstream.pool",
     "The facade's pure decisions never load the upstream pool"),
    # a lower layer reaching up, and two siblings that must stay apart
    ("gateway.policy.retry", "import gateway.dataplane.forward", "Peel's packages, top to bottom"),
    ("gateway.http.framing", "import gateway.edge.protocol", "Peel's packages, top to bottom"),
    ("gateway.core.errors", "import gateway.http.headers", "Peel's packages, top to bottom"),
    ("gateway.telemetry.metrics", "import gateway.upstream.balancer", "Peel's packages, top to bottom"),
    ("gateway.dataplane.buffering", "import gateway.server.serve", "Peel's packages, top to bottom"),
])
def test_a_planted_violation_is_refused(tree: Path, module: str, line: str, contract: str) -> None:
    plant(tree, module, line)
    done = lint_imports(tree)
    assert done.returncode != 0, done.stdout
    assert f"{contract} BROKEN" in done.stdout, done.stdout
    assert module in done.stdout, done.stdout
