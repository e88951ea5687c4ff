"""`/api/v1/certificates`: workload certificates from Peel's CA, for gateways joining or renewing.

    POST /api/v1/certificates/join    Authorization: Bearer <join token>; {"csr": PEM}
    POST /api/v1/certificates/renew   {"chain": PEM, "csr": PEM, "timestamp": unix s, "signature": b64}
    GET  /api/v1/certificates/revocations   the revocations of the latest config version
    POST /api/v1/certificates/revocations   {"serial": HEX | "identity": ID, "reason": TEXT}

Join and renew answer `{"certificate": leaf + intermediate PEM, "bundle": roots PEM, "spiffe_id", "serial",
"not_after"}`. Neither takes an admin token (`gateway.admin.auth.SELF_AUTHENTICATED`): a join is
authenticated by its one-time join token, a renewal by the current certificate and a signature of
its key (`gateway.identity.issuer`). The CA is `[identity] ca_dir` of this process's settings, and
its keys never leave it: nothing here serves a key.

A join checks the token (known, not revoked, not used, not expired), then the CSR (exactly the
token's identity), signs, and only then marks the token used, in one conditional UPDATE: a CSR
that is refused leaves the token usable, and of two racing requests only one gets a certificate.
Failed token lookups are throttled per client address like admin tokens (`FailureThrottle`).

Bodies are at most `MAX_BODY` bytes: these paths answer before any admin token is checked.

Revocations are rules like routes (admin token, `read` to list, `write` to revoke): a revocation is
a new config version whose document lists it (`routes.revocations`), committed through
`commit_edit` (If-Match, the reason, the compile check), so every gateway following the table
refuses the certificate within its poll interval (docs/mtls.md, "Revocation"). `identity` is a
SPIFFE ID or a service name of `[identity] trust_domain`; `at` is the time of the request. A
renewal presenting a revoked certificate is refused 403 `certificate-revoked`.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HTTPRoute

from gateway.admin.auth import FailureThrottle, TooManyFailures
from gateway.admin.wire import BadRequest, BodyTooLarge, answer, body_object, problem_response, read_json
from gateway.admin.writes import commit_edit, write_answer
from gateway.core import problems
from gateway.core.settings import Settings
from routes.errors import RuleError
from routes.fields import NAME_RE
from routes.model import Document
from routes.revocations import Revocation, Revocations, format_time
from routes.store import Store

if TYPE_CHECKING:
    from gateway.identity.issuer import Issued, Issuer

MAX_BODY = 64 * 1024
JOIN_PATH = "/api/v1/certificates/join"
RENEW_PATH = "/api/v1/certificates/renew"
REVOCATIONS_PATH = "/api/v1/certificates/revocations"

# identity error class name -> (status, problem code); looked up by name so that this module does
# not import gateway.identity (and cryptography) until a certificate is asked for
_IDENTITY_ERRORS = {
    "CsrRefused": (400, "csr-refused"),
    "BadSpiffeId": (400, "csr-refused"),
    "BadJoinToken": (401, "invalid-join-token"),
    "NotAllowed": (403, "identity-not-allowed"),
    "ProofRefused": (401, "renewal-refused"),
    "Revoked": (403, "certificate-revoked"),
    "CaError": (503, "ca-unavailable"),
}


def _problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return problem_response(problems.problem(status, code, detail), headers)


def _refused_token(code: str, detail: str, challenge: str = 'Bearer realm="peel-join", error="invalid_token"',
                   ) -> Response:
    return _problem(401, code, detail, {"WWW-Authenticate": challenge})


async def _body(request: Request, fields: tuple[str, ...]) -> dict[str, Any]:
    """The flat JSON object of a certificate request: the string (or integer) `fields`, nothing else."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise BodyTooLarge("body", f"is larger than {MAX_BODY} bytes", int(declared))
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise BodyTooLarge("body", f"is larger than {MAX_BODY} bytes")
    if data.count(b"{") + data.count(b"[") > 4:  # a flat object has one
        raise BadRequest("body", "must be a flat JSON object")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("body", f"is not valid JSON: {exc}") from None
    return body_object(value, fields, fields)


def _text(body: dict[str, Any], key: str) -> bytes:
    value = body[key]
    if not isinstance(value, str) or not value:
        raise RuleError(key, "must be a non-empty string (PEM)")
    return value.encode()


def _bearer(request: Request) -> str | None:
    scheme, _, rest = request.headers.get("authorization", "").partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest.strip() else None


class CertificateResource:
    """The two certificate paths over `store` (join tokens) and the CA of `settings`."""

    def __init__(self, store: Store, settings: Settings, *, throttle: FailureThrottle | None = None) -> None:
        self.store = store
        self.identity = settings.identity
        self.throttle = throttle if throttle is not None else FailureThrottle()

    def routes(self) -> list[HTTPRoute]:
        return [HTTPRoute(JOIN_PATH, self.join, methods=["POST"]),
                HTTPRoute(RENEW_PATH, self.renew, methods=["POST"]),
                HTTPRoute(REVOCATIONS_PATH, self.revocations, methods=["GET"]),
                HTTPRoute(REVOCATIONS_PATH, self.revoke, methods=["POST"])]

    def _issuer(self) -> Issuer:
        from gateway.identity.issuer import Issuer

        return Issuer(Path(self.identity.ca_dir),
                      timedelta(seconds=self.identity.certificate_lifetime))

    async def join(self, request: Request) -> Response:
        token = _bearer(request)
        if token is None:
            return _refused_token("missing-join-token", "this path needs Authorization: Bearer <join "
                                  "token> (create one with `peel join-token create --service S`)")
        client = request.client.host if request.client else ""
        try:
            self.throttle.reserve(client)
        except TooManyFailures as exc:
            return _problem(429, "too-many-token-failures", str(exc),
                            {"Retry-After": str(math.ceil(exc.retry_after))})
        from gateway.identity import tokens
        from gateway.identity.errors import IdentityError

        try:
            named = tokens.token_identity(token)
        except IdentityError as exc:
            return _identity_problem(exc)
        digest = tokens.hash_token(token)
        found = await run_in_threadpool(self.store.join_token, digest)
        now = datetime.now(UTC)
        if found is None or found.service != named.service:
            return _refused_token("invalid-join-token", "the join token is unknown")
        status = found.status(now)
        if status != "active":
            return _refused_token(f"join-token-{status}", f"the join token for {found.service} is "
                                  f"{status}; create a new one with `peel join-token create`")
        self.throttle.refund(client)
        csr = _text(await _body(request, ("csr",)), "csr")

        def issue() -> Issued | None:
            issued = self._issuer().join(csr, found.service, now=now)
            # marked used only now: a refused CSR leaves the token usable; a race has one winner
            return issued if self.store.use_join_token(digest, now=now) else None

        try:
            issued = await run_in_threadpool(issue)
        except IdentityError as exc:
            return _identity_problem(exc)
        if issued is None:
            return _refused_token("join-token-used", f"the join token for {found.service} is used")
        return JSONResponse(issued.to_json())

    async def renew(self, request: Request) -> Response:
        from gateway.identity.errors import IdentityError
        from gateway.identity.issuer import RenewalRequest

        body = await _body(request, ("chain", "csr", "timestamp", "signature"))
        timestamp = body["timestamp"]
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise RuleError("timestamp", "must be an integer (unix seconds)", str(timestamp))
        signature = body["signature"]
        if not isinstance(signature, str):
            raise RuleError("signature", "must be a string (base64)")
        renewal = RenewalRequest(_text(body, "chain"), _text(body, "csr"), timestamp, signature)

        def issue() -> Issued:
            self._check_not_revoked(renewal.chain_pem)
            return self._issuer().renew(renewal, now=datetime.now(UTC))

        try:
            issued = await run_in_threadpool(issue)
        except IdentityError as exc:
            return _identity_problem(exc)
        return JSONResponse(issued.to_json())

    def _check_not_revoked(self, chain: bytes) -> None:
        """`Revoked` when the latest config version revokes the chain's leaf."""
        from gateway.identity.errors import Revoked
        from gateway.identity.issuer import load_chain
        from gateway.identity.revocation import describe, leaf_facts

        revocations = Revocations(self.store.latest().document.revocations)
        found = leaf_facts(load_chain(chain)[0]).refused_by(revocations)
        if found is not None:
            raise Revoked(f"the certificate is revoked: {describe(found)}; join again with a new "
                          "token (`peel join-token create`)")

    async def revocations(self, request: Request) -> Response:
        latest = await run_in_threadpool(self.store.latest)
        return answer({"version": latest.version,
                       "revocations": [r.to_dict() for r in latest.document.revocations]},
                      version=latest.version)

    async def revoke(self, request: Request) -> Response:
        data = body_object(await read_json(request), ("serial", "identity", "reason"))
        given = [key for key in ("serial", "identity") if key in data]
        if len(given) != 1:
            raise RuleError(given[1] if given else "serial", "give exactly one of serial or identity")
        key = given[0]
        value = data[key]
        if not isinstance(value, str):
            raise RuleError(key, "must be a string", value)
        if key == "identity" and isinstance(value, str) and NAME_RE.match(value):
            value = f"spiffe://{self.identity.trust_domain}/svc/{value}"  # a service name
        reason = data.get("reason", "")
        if not isinstance(reason, str):
            raise RuleError("reason", "must be a string", reason)
        fields = {key: value, "at": format_time(datetime.now(UTC)), "reason": reason.strip()}
        try:
            revocation = Revocation.parse(fields, "revocation")
        except RuleError as exc:
            raise RuleError(exc.field.removeprefix("revocation."), exc.message, exc.value) from None

        def edit(doc: Document) -> Document:
            if revocation.serial is not None and any(r.serial == revocation.serial
                                                     for r in doc.revocations):
                return doc  # revoked already: no new version
            return Document.build(doc.services, doc.routes, mesh=doc.mesh,
                                  revocations=(*doc.revocations, revocation))

        why = f"revoke {revocation.subject}" + (f": {revocation.reason}" if revocation.reason else "")
        info, diff, live = await commit_edit(request, self.store, edit, why)
        return await write_answer(info, diff, live, status=201 if info is not None else 200,
                                  extra={"revocation": revocation.to_dict()})


def _identity_problem(exc: Exception) -> Response:
    status, code = _IDENTITY_ERRORS.get(type(exc).__name__, (400, "identity-refused"))
    if code == "renewal-refused":  # the credential is the certificate and its key's signature
        return _refused_token(code, str(exc), 'PeelRenewal realm="peel"')
    if status == 401:
        return _refused_token(code, str(exc))
    return _problem(status, code, str(exc))
