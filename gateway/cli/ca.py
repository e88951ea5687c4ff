"""`peel ca`: Peel's certificate authority, local (it reads and writes the CA directory; no admin API
is involved and no key is ever printed or sent). See docs/identity.md.

    peel ca init [--trust-domain TD] [--dir DIR] [--offline-root]
    peel ca rotate [--overlap 48h]  |  peel ca rotate --finish [--force]
    peel ca status
    peel ca issue --service NAME --csr FILE [--lifetime 24h] [--out FILE] [--chain]

Except revocation, which is a rule of the fleet and goes through the admin API like the other
rule changes (a new config version every gateway follows; docs/mtls.md, "Revocation"):

    peel ca revoke --serial HEX | --identity ID [--reason TEXT] [--if-match N]
    peel ca revocations
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.args import Commands, actions, add_command, write_options
from gateway.cli.context import admin_client, settings
from gateway.cli.local import duration
from gateway.cli.output import print_json, table

if TYPE_CHECKING:
    from cryptography import x509

    from gateway.identity.ca import CertificateAuthority

# gateway.identity (and so cryptography) is imported by the handlers: other commands start faster.


def _open(args: argparse.Namespace) -> CertificateAuthority:
    from gateway.identity.ca import CertificateAuthority

    return CertificateAuthority.open(_dir(args))


def _lifetimes(args: argparse.Namespace) -> dict[str, Any]:
    """The lifetimes given on the command line; the others keep the CA's defaults."""
    return {name: getattr(args, name) for name in ("root_lifetime", "intermediate_lifetime")
            if getattr(args, name) is not None}


def _dir(args: argparse.Namespace) -> Path:
    """--dir, else `[identity] ca_dir` of the settings."""
    return Path(args.dir) if args.dir else Path(settings(args).identity.ca_dir)


def _now() -> datetime:
    return datetime.now(UTC)


def _offline_note(path: Path | None) -> None:
    if path is not None:
        print(f"peel: the root key is at {path}: move it off this machine (it is needed again only "
              "to sign a new intermediate under the same root)", file=sys.stderr)


def cmd_init(args: argparse.Namespace) -> int:
    from gateway.identity.ca import CertificateAuthority

    trust_domain = args.trust_domain or settings(args).identity.trust_domain
    ca, offline = CertificateAuthority.init(
        _dir(args), trust_domain, now=_now(), offline_root=args.offline_root,
        name_constraints=not args.no_name_constraints, **_lifetimes(args))
    print(f"CA for trust domain {ca.trust_domain} in {ca.directory}; trust bundle: {ca.bundle_path}")
    _offline_note(offline)
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    from gateway.identity.ca import DEFAULT_OVERLAP

    ca = _open(args)
    if args.finish:
        old = ca.previous
        ca = ca.finish_rotation(now=_now(), force=args.force)
        print(f"rotation finished: the root of generation {old.number if old else '?'} left the trust "
              f"bundle and its keys were deleted; {ca.bundle_path} holds one root")
        return 0
    overlap = args.overlap or DEFAULT_OVERLAP
    ca, offline = ca.rotate(now=_now(), overlap=overlap, **_lifetimes(args))
    until = ca.state.overlap_until
    print(f"generation {ca.current.number} signs from now on; {ca.bundle_path} holds both roots; "
          f"run `peel ca rotate --finish` after {until:%Y-%m-%d %H:%M:%S} UTC")
    _offline_note(offline)
    return 0


def _describe(role: str, generation: int, cert: x509.Certificate, key: str) -> dict[str, Any]:
    from gateway.identity import certs

    return {"role": role, "generation": generation, "subject": cert.subject.rfc4514_string(),
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "sha256": certs.fingerprint(cert), "key": key}


def cmd_status(args: argparse.Namespace) -> int:
    ca = _open(args)
    rows = []
    for label, gen in (("current", ca.current), ("previous", ca.previous)):
        if gen is None:
            continue
        root_key = ("here" if gen.root_key_path.exists()
                    else "offline" if ca.state.offline_root and label == "current" else "deleted")
        inter_key = "here" if gen.intermediate_key_path.exists() else "deleted"
        rows.append(_describe(f"{label} root", gen.number, gen.root, root_key))
        rows.append(_describe(f"{label} intermediate", gen.number, gen.intermediate, inter_key))
    until = ca.state.overlap_until
    if args.json:
        print_json({"trust_domain": ca.trust_domain, "directory": str(ca.directory),
                    "bundle": str(ca.bundle_path), "bundle_roots": 2 if ca.previous else 1,
                    "overlap_until": until.isoformat() if until else None, "certificates": rows})
        return 0
    print(f"trust domain  {ca.trust_domain}")
    print(f"directory     {ca.directory}")
    print(f"bundle        {ca.bundle_path} ({2 if ca.previous else 1} root{'s' if ca.previous else ''})")
    if until is not None:
        print(f"rotation      overlapping until {until:%Y-%m-%d %H:%M:%S} UTC, then "
              "`peel ca rotate --finish`")
    print()
    table([(r["role"], r["generation"], r["not_after"][:19].replace("T", " "), r["key"], r["sha256"])
           for r in rows], ("CERTIFICATE", "GEN", "EXPIRES (UTC)", "KEY", "SHA-256"))
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    from gateway.identity import certs
    from gateway.identity.errors import CaError
    from gateway.identity.files import PUBLIC_MODE, write_atomic

    ca = _open(args)
    try:
        data = Path(args.csr).read_bytes() if args.csr != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        raise CaError(f"--csr {args.csr}: {exc.strerror}") from None
    lifetime = {} if args.lifetime is None else {"lifetime": args.lifetime}
    leaf = ca.issue(certs.load_csr(data, f"--csr {args.csr}"), args.service, now=_now(), **lifetime)
    pem = certs.cert_pem(leaf, ca.current.intermediate) if args.chain else certs.cert_pem(leaf)
    if args.out:
        write_atomic(Path(args.out), pem, PUBLIC_MODE)
        print(f"{certs.spiffe_id_of(leaf)} until {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC "
              f"written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(pem.decode())
    return 0


REVOCATIONS = "/api/v1/certificates/revocations"


def cmd_revoke(args: argparse.Namespace) -> int:
    body = {"serial": args.serial} if args.serial else {"identity": args.identity}
    if args.reason:
        body["reason"] = args.reason
    with admin_client(args) as client:
        answer = client.request("POST", REVOCATIONS, body=body, if_match=args.if_match)
    if args.json:
        print_json(answer)
        return 0
    revoked = answer["revocation"]
    what = f"serial {revoked['serial']}" if "serial" in revoked else \
        f"{revoked['identity']} (certificates issued until {revoked['at']})"
    if answer["changed"]:
        print(f"revoked {what} in config version {answer['version']}: gateways refuse it at their "
              "next table")
    else:
        print(f"{what} is revoked already (config version {answer['version']})")
    return 0


def cmd_revocations(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        answer = client.request("GET", REVOCATIONS)
    if args.json:
        print_json(answer)
        return 0
    rows = [(r["at"], r.get("serial") or "", r.get("identity") or "", r.get("reason", ""))
            for r in answer["revocations"]]
    if not rows:
        print(f"no revocations in config version {answer['version']}")
        return 0
    table(rows, ("AT (UTC)", "SERIAL", "IDENTITY (issued until AT)", "REASON"))
    return 0


def register(commands: Commands) -> None:
    """ca init, rotate, status, issue, revoke, revocations."""
    group = actions(add_command(commands, "ca", None, "the certificate authority (local: its directory)"))

    def where(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", metavar="DIR", help="the CA's directory (default: [identity] ca_dir)")
        return p

    def lifetimes(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root-lifetime", type=duration, metavar="DURATION",
                       help="how long the root is valid (default: 3650d)")
        p.add_argument("--intermediate-lifetime", type=duration, metavar="DURATION",
                       help="how long the intermediate is valid (default: 365d)")

    init = where(add_command(group, "init", cmd_init, "make a root and an intermediate for a trust domain"))
    init.add_argument("--trust-domain", metavar="NAME",
                      help="identities are spiffe://NAME/svc/<service> (default: [identity] trust_domain)")
    init.add_argument("--offline-root", action="store_true",
                      help="write the root key to DIR/offline/ for you to move away; the intermediate "
                           "signs leaves")
    init.add_argument("--no-name-constraints", action="store_true",
                      help="leave out the URI name constraint on the trust domain (for verifiers "
                           "that do not implement URI name constraints)")
    lifetimes(init)
    rotate = where(add_command(group, "rotate", cmd_rotate,
                               "start a root rotation (both roots trusted), or --finish it",
                               check=_rotate_check))
    rotate.add_argument("--overlap", type=duration, metavar="DURATION",
                        help="how long both roots stay in the bundle before --finish (default: 48h)")
    rotate.add_argument("--finish", action="store_true", help="drop the old root from the bundle")
    rotate.add_argument("--force", action="store_true", help="with --finish: before the overlap ends")
    lifetimes(rotate)
    where(add_command(group, "status", cmd_status, "roots, intermediates, expiry and fingerprints"))
    issue = where(add_command(group, "issue", cmd_issue,
                              "sign a workload certificate from a CSR (local: tests and bootstrap)"))
    issue.add_argument("--service", required=True, help="the identity is spiffe://<trust-domain>/svc/SERVICE")
    issue.add_argument("--csr", required=True, metavar="FILE",
                       help="PEM or DER CSR asking for exactly that SPIFFE ID ('-': stdin)")
    issue.add_argument("--lifetime", type=duration, metavar="DURATION",
                       help="how long the certificate is valid (default: 24h)")
    issue.add_argument("--out", metavar="FILE", help="write the certificate here (default: stdout)")
    issue.add_argument("--chain", action="store_true",
                       help="append the intermediate (what a TLS server sends)")
    revoke = add_command(group, "revoke", cmd_revoke, "revoke a certificate or an identity (admin "
                         "API: a new config version every gateway enforces)", check=_revoke_check)
    revoke.add_argument("--serial", metavar="HEX", help="the certificate's serial (as `openssl x509 "
                        "-serial` or identity.json print it)")
    revoke.add_argument("--identity", metavar="ID", help="a SPIFFE ID or a service name: every "
                        "certificate of it issued until now")
    write_options(revoke)
    add_command(group, "revocations", cmd_revocations, "list the revocations of the latest config "
                "version (admin API)")


def _revoke_check(args: argparse.Namespace) -> str | None:
    if bool(args.serial) == bool(args.identity):
        return "give exactly one of --serial or --identity"
    return None


def _rotate_check(args: argparse.Namespace) -> str | None:
    if args.force and not args.finish:
        return "--force goes with --finish"
    if args.finish and args.overlap is not None:
        return "--overlap starts a rotation; it does not go with --finish"
    return None
