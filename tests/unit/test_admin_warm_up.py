"""The admin app pays its first write's one-time costs at start (its lifespan), not while a
serving process's requests wait behind that write."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_the_admin_app_imports_the_thread_pool_backend_at_start() -> None:
    # a fresh interpreter: this test process may have imported it already
    script = textwrap.dedent("""
        import asyncio, sys
        from gateway.admin.app import _warm_up
        assert "anyio._backends._asyncio" not in sys.modules
        async def start():
            async with _warm_up(None):
                print("anyio._backends._asyncio" in sys.modules)
        asyncio.run(start())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
