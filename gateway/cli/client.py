"""The CLI's client for the admin API: one synchronous httpx client, errors as one-line messages.

Every failure becomes `AdminError` whose text is what `peel` prints after `peel: `: the refused
field and value for a refused change (from the problem+json answer), a plain reason when the API is
unreachable or refuses the token.
"""

from __future__ import annotations

import json
import ssl
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from routes.errors import PeelError

if TYPE_CHECKING:
    import httpx

DEFAULT_ADMIN_URL = "http://127.0.0.1:9901"
API = "/api/v1"


class AdminError(PeelError):
    """The admin API refused a request or could not be reached. `problem` is its answer, if any."""

    def __init__(self, message: str, *, status: int | None = None,
                 problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}


class AdminClient:
    """Calls the admin API at `base_url` with a bearer token. Use as a context manager."""

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None, cacert: str | None = None) -> None:
        """`cacert`: a PEM file of the CA(s) that signed an https admin listener's certificate
        (default: the system's trust store). Verification is never turned off."""
        if not token:
            raise AdminError("no admin token: pass --token or set PEEL_ADMIN_TOKEN "
                             "(an operator creates one with `peel token create NAME`)")
        # Imported here: `peel serve` reaches this module through the CLI's arguments, and httpx
        # would stay in every worker's memory. Without its command line: httpx's package imports
        # `httpx._main` (the `httpx` command: click, rich and pygments where installed), 35 ms of
        # every `peel` command; None in `sys.modules` makes that import fail as when they are not
        # installed, and httpx falls back to a stub (its own `except ImportError`).
        if "httpx" not in sys.modules:
            sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
        import httpx

        self.base_url = base_url.rstrip("/")
        verify: ssl.SSLContext | bool = True
        if cacert:
            try:
                verify = ssl.create_default_context(cafile=cacert)
            except (OSError, ssl.SSLError) as exc:
                raise AdminError(f"cannot read the admin CA file {cacert} (--cacert or PEEL_ADMIN_CA):"
                                 f" {getattr(exc, 'strerror', None) or exc}") from None
        elif self.base_url[:7].lower() == "http://":
            # A plain-http admin URL makes no TLS connection (redirects are not followed), so the
            # trust store is not loaded: 40 ms of CPU at every command, a sixth of a `peel apply`.
            # A context that trusts no CA refuses any certificate, were one ever asked for.
            verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport,
                                  verify=verify,
                                  headers={"Authorization": f"Bearer {token}",
                                           "Accept": "application/json"})

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None,
                reason: str | None = None, if_match: int | None = None) -> dict[str, Any]:
        """One call; the decoded JSON answer, or `AdminError` with a one-line reason."""
        headers: dict[str, Any] = {}
        if reason:
            # Header bytes as UTF-8: a reason may hold any language; the API decodes it so.
            headers["Peel-Reason"] = reason.encode("utf-8")
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        import httpx

        content = None
        if body is not None:
            # default=str: a YAML file may hold dates and the like; the API refuses them by field.
            content = json.dumps(body, default=str).encode()
            headers["Content-Type"] = "application/json"
        try:
            response = self._http.request(method, path, content=content, params=params, headers=headers)
        except httpx.TimeoutException:
            raise AdminError(f"the admin API at {self.base_url} did not answer in time") from None
        except httpx.ConnectError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise AdminError(f"the admin API at {self.base_url} has a certificate this client does "
                                 f"not trust ({exc}); pass its CA with --cacert or PEEL_ADMIN_CA") from None
            raise AdminError(f"cannot reach the admin API at {self.base_url} ({exc}); is `peel serve` "
                             "running there? (set --admin or PEEL_ADMIN_URL)") from None
        except httpx.HTTPError as exc:
            raise AdminError(f"cannot reach the admin API at {self.base_url} ({exc}); is `peel serve` "
                             "running there? (set --admin or PEEL_ADMIN_URL)") from None
        return self._decode(response)

    def _decode(self, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.is_success and isinstance(data, dict):
            return data
        problem = data if isinstance(data, dict) else {}
        detail = str(problem.get("detail") or response.text.strip()[:200] or response.reason_phrase)
        if response.status_code == 401:
            message = f"the admin API refused the token: {detail}"
        elif response.is_success:
            message = f"the admin API at {self.base_url} answered something that is not a JSON object"
        else:
            message = detail
        raise AdminError(" ".join(message.split()), status=response.status_code, problem=problem)

    # -- resources -----------------------------------------------------------------------------

    def items(self, kind: str) -> dict[str, Any]:
        """`kind` is "services" or "routes"."""
        return self.request("GET", f"{API}/{kind}")

    def item(self, kind: str, name: str) -> dict[str, Any]:
        return self.request("GET", f"{API}/{kind}/{quote(name, safe='')}")

    def put_item(self, kind: str, name: str, body: dict[str, Any], *, reason: str | None = None,
            if_match: int | None = None) -> dict[str, Any]:
        return self.request("PUT", f"{API}/{kind}/{quote(name, safe='')}", body=body, reason=reason,
                            if_match=if_match)

    def delete_item(self, kind: str, name: str, *, reason: str | None = None,
               if_match: int | None = None) -> dict[str, Any]:
        return self.request("DELETE", f"{API}/{kind}/{quote(name, safe='')}", reason=reason,
                            if_match=if_match)

    def config(self, version: int | None = None) -> dict[str, Any]:
        """The latest config version with its document, or version `version`."""
        if version is None:
            return self.request("GET", f"{API}/config")
        return self.request("GET", f"{API}/config/versions/{version}")

    def history(self, limit: int | None = None) -> dict[str, Any]:
        params = {"limit": limit} if limit is not None else None
        return self.request("GET", f"{API}/config/versions", params=params)

    def diff(self, old: int, new: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"from": old}
        if new is not None:
            params["to"] = new
        return self.request("GET", f"{API}/config/diff", params=params)

    def apply(self, document: Any, *, dry_run: bool = False, reason: str | None = None,
              if_match: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"document": document, "dry_run": dry_run}
        if reason:
            body["reason"] = reason
        return self.request("POST", f"{API}/config/apply", body=body, if_match=if_match)

    def apply_changes(self, changes: dict[str, Any], version: int, *, dry_run: bool = False,
                      reason: str | None = None) -> dict[str, Any]:
        """Apply `changes` (`routes.patch`) to config version `version`."""
        body: dict[str, Any] = {"changes": changes, "dry_run": dry_run}
        if reason:
            body["reason"] = reason
        return self.request("POST", f"{API}/config/apply", body=body, if_match=version)

    def stored_config(self) -> tuple[int, str] | None:
        """The latest config version's number and stored text; None when the admin API does not
        give it (an older Peel without `GET /config/stored`, or any refusal)."""
        import httpx

        try:
            response = self._http.get(f"{API}/config/stored")
        except httpx.HTTPError:
            return None  # `request` says why, when the whole document is sent
        tag = response.headers.get("etag", "").strip('"')
        if not response.is_success or not tag.isdigit():
            return None  # the whole document's apply then says what the API refused
        return int(tag), response.text

    def rollback(self, version: int, *, reason: str | None = None,
                 if_match: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"version": version}
        if reason:
            body["reason"] = reason
        return self.request("POST", f"{API}/config/rollback", body=body, if_match=if_match)

    def match(self, method: str, url: str, headers: dict[str, str] | None = None,
              cookies: dict[str, str] | None = None, client: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"method": method, "url": url, "headers": headers or {}}
        if cookies:
            body["cookies"] = cookies
        if client is not None:
            body["from"] = client
        return self.request("POST", f"{API}/match", body=body)
