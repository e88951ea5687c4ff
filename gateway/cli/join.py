"""`peel join-token` (local, on the control plane: the store and the CA's directory) and `peel join`
(on a new VM: makes its key, sends a CSR to the control plane, keeps the identity). See
docs/identity.md.

    peel join-token create --service NAME [--ttl 15m]
    peel join-token list
    peel join-token revoke ID
    peel join --token TOKEN --control https://admin-host:9901 [--cacert FILE] [--advertise URL]
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.cli.args import Commands, actions, add_command, positive
from gateway.cli.context import open_store, settings
from gateway.cli.local import duration
from gateway.cli.output import print_json, table
from routes.errors import RuleError

DEFAULT_TTL = timedelta(minutes=15)
MAX_TTL = timedelta(days=7)


def cmd_create(args: argparse.Namespace) -> int:
    from gateway.identity import tokens
    from gateway.identity.ca import CertificateAuthority
    from gateway.identity.spiffe import service_id

    ttl = args.ttl or DEFAULT_TTL
    if ttl > MAX_TTL:
        raise RuleError("ttl", "a join token lives at most 7 days (7d)", str(ttl))
    # the CA's trust domain, so the token names the identity this CA will sign
    ca = CertificateAuthority.open(Path(settings(args).identity.ca_dir))
    identity = service_id(ca.trust_domain, args.service)
    token = tokens.make_token(identity)
    expires_at = datetime.now(UTC) + ttl
    token_id = open_store(args).create_join_token(tokens.hash_token(token), args.service, expires_at)
    print(token)
    print(f"peel: join token {token_id} for {identity}, usable once until "
          f"{expires_at:%Y-%m-%d %H:%M:%S} UTC; it is shown only this once", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    found = open_store(args).list_join_tokens()
    if args.json:
        print_json([{"id": t.id, "service": t.service, "created_at": t.created_at.isoformat(),
                     "expires_at": t.expires_at.isoformat(),
                     "used_at": t.used_at.isoformat() if t.used_at else None,
                     "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
                     "status": t.status(now)} for t in found])
        return 0
    table([(t.id, t.service, f"{t.created_at:%Y-%m-%d %H:%M}", f"{t.expires_at:%Y-%m-%d %H:%M}",
            f"{t.used_at:%Y-%m-%d %H:%M}" if t.used_at else "-", t.status(now)) for t in found],
          ("ID", "SERVICE", "CREATED", "EXPIRES", "USED", "STATUS"))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    open_store(args).revoke_join_token(args.id)
    print(f"join token {args.id} revoked")
    return 0


def cmd_join(args: argparse.Namespace) -> int:
    from gateway.identity.files import private_dir
    from gateway.identity.join import join, locked, write_state

    identity = settings(args).identity
    cafile = args.cacert or identity.control_cacert or None
    if not args.token:
        raise RuleError("token", "peel join needs --token (from `peel join-token create` on the control "
                        "plane)")
    key, issued = join(args.control, args.token, cafile=cafile)
    state_dir = private_dir(Path(identity.state_dir))
    with locked(state_dir):
        write_state(state_dir, key, issued, args.control)
    leaf = issued.leaf
    print(f"joined as {issued.identity}: certificate {leaf.serial_number:x} valid until "
          f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC, kept in {state_dir}")
    if args.cacert and args.cacert != identity.control_cacert:
        print(f"peel: renewals verify the control plane with [identity] control_cacert; set it to "
              f"{args.cacert}", file=sys.stderr)
    if args.advertise:
        # the service registry (docs/east-west.md, "Registry"): this VM's inbound listener, as itself
        from gateway.identity.caller import call
        from gateway.identity.join import read_state

        _, answer = call(read_state(state_dir), "POST", "/api/v1/control/endpoints",
                         {"endpoint": args.advertise}, cafile=cafile)
        assert answer is not None
        print(f"registered {answer['endpoint']} for {answer['service']} until {answer['expires_at']} "
              "(the sidecar's heartbeats keep it)")
    return 0


def register(commands: Commands) -> None:
    """join-token create, list, revoke; join."""
    group = actions(add_command(commands, "join-token", None,
                                "one-time tokens for new gateways to join (local: the store and the CA)"))
    create = add_command(group, "create", cmd_create, "create a join token for a service (shown once)")
    create.add_argument("--service", required=True,
                        help="the token allows the identity spiffe://<trust-domain>/svc/SERVICE")
    create.add_argument("--ttl", type=duration, metavar="DURATION",
                        help="how long the token can be used (default: 15m; at most 7d)")
    add_command(group, "list", cmd_list, "list join tokens (never the tokens themselves)")
    add_command(group, "revoke", cmd_revoke, "revoke an unused join token").add_argument("id", type=positive)
    join = add_command(commands, "join", cmd_join,
                       "join this gateway: make its key, get its certificate with a join token "
                       "(--token), keep them in [identity] state_dir")
    join.add_argument("--control", required=True, metavar="URL",
                      help="the control plane's admin API, https://admin-host:9901")
    join.add_argument("--advertise", metavar="URL",
                      help="register this VM's inbound listener in the service registry under the "
                      "token's service, https://10.0.2.15:15443 (the sidecar keeps it registered)")
