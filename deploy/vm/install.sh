#!/bin/sh
# Install, upgrade or remove Peel on a Debian or Ubuntu VM with systemd (deploy/vm/README.md).
#
#   install.sh [--role gateway|sidecar] [--wheelhouse DIR | --source DIR] [--database URL]
#              [--control URL [--join-token TOKEN] [--control-cacert FILE] [--advertise URL]]
#              [--app URL]
#   install.sh --uninstall          stop and remove Peel; keep /etc/peel and /var/lib/peel
#   install.sh --purge              remove Peel, its settings, its data and its user
#
# --role sidecar: only the east-west listeners (outbound 127.0.0.1:15001, inbound 0.0.0.0:15443 in
# front of the local app at --app URL, default http://127.0.0.1:8080), no public or admin listener;
# with --control (and no --database) it follows that control plane for its route table.
# --join-token runs `peel join --control URL` at install (the sidecar needs its identity).
#
# Re-running it upgrades in place: a new virtualenv is built next to the running one, the store's
# schema is migrated (`peel db upgrade`), then the service restarts while systemd holds the
# listening sockets, so no connection is refused. Every check runs before the first change: on an
# unsupported system it says why and changes nothing.
set -eu

PREFIX=/opt/peel
CONFIG_DIR=/etc/peel
CONFIG=$CONFIG_DIR/peel.toml
STATE_DIR=/var/lib/peel
UNIT_DIR=/etc/systemd/system
# every unit any role installs: the sockets are the role's (the gateway's public and admin listeners,
# the sidecar's outbound and inbound ones); peel.service is the same for both
ALL_UNITS="peel.service peel.socket peel-admin.socket peel-outbound.socket peel-inbound.socket"
USER_NAME=peel
HERE=$(cd "$(dirname "$0")" && pwd)
cd /

role=gateway
role_given=0
database=
control=
join_token=
control_cacert=
app=
advertise=
wheelhouse=
source_dir=
action=install

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

usage() {
  sed -n '2,14p' "$HERE/$(basename "$0")" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while [ $# -gt 0 ]; do
  case $1 in
    --role) [ $# -ge 2 ] || die "--role needs gateway or sidecar"; role=$2; role_given=1; shift 2 ;;
    --role=*) role=${1#--role=}; role_given=1; shift ;;
    --database) [ $# -ge 2 ] || die "--database needs a URL"; database=$2; shift 2 ;;
    --database=*) database=${1#--database=}; shift ;;
    --control) [ $# -ge 2 ] || die "--control needs the control plane's admin URL"; control=$2; shift 2 ;;
    --control=*) control=${1#--control=}; shift ;;
    --join-token) [ $# -ge 2 ] || die "--join-token needs a token"; join_token=$2; shift 2 ;;
    --join-token=*) join_token=${1#--join-token=}; shift ;;
    --control-cacert) [ $# -ge 2 ] || die "--control-cacert needs a file"; control_cacert=$2; shift 2 ;;
    --control-cacert=*) control_cacert=${1#--control-cacert=}; shift ;;
    --advertise) [ $# -ge 2 ] || die "--advertise needs a URL"; advertise=$2; shift 2 ;;
    --advertise=*) advertise=${1#--advertise=}; shift ;;
    --app) [ $# -ge 2 ] || die "--app needs a URL"; app=$2; shift 2 ;;
    --app=*) app=${1#--app=}; shift ;;
    --wheelhouse) [ $# -ge 2 ] || die "--wheelhouse needs a directory"; wheelhouse=$2; shift 2 ;;
    --wheelhouse=*) wheelhouse=${1#--wheelhouse=}; shift ;;
    --source) [ $# -ge 2 ] || die "--source needs a directory"; source_dir=$2; shift 2 ;;
    --source=*) source_dir=${1#--source=}; shift ;;
    --uninstall) action=uninstall; shift ;;
    --purge) action=purge; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; usage 2 >&2 ;;
  esac
done

# -- checks: nothing below changes the system until they all pass ------------------------------------

[ "$(id -u)" -eq 0 ] || die "must run as root (it creates a user, /opt/peel and systemd units)"
[ -d /run/systemd/system ] || die "systemd is not running here (no /run/systemd/system): this installer only supports systemd"
command -v systemctl >/dev/null 2>&1 || die "systemctl not found"

[ -r /etc/os-release ] || die "cannot tell the distribution (/etc/os-release is missing): Debian and Ubuntu are supported"
# shellcheck disable=SC1091
os_id=$(. /etc/os-release && echo "${ID:-}")
os_like=$(. /etc/os-release && echo "${ID_LIKE:-}")
case "$os_id" in
  debian|ubuntu) ;;
  *) case " $os_like " in
       *" debian "*|*" ubuntu "*) ;;
       *) die "unsupported distribution '$os_id': Debian and Ubuntu are scripted; for RHEL see deploy/vm/README.md" ;;
     esac ;;
esac

if [ "$action" = install ]; then
  case "$role" in gateway|sidecar) ;; *) die "--role must be gateway or sidecar, not '$role'" ;; esac
  python=$(command -v python3 || true)
  [ -n "$python" ] || die "python3 not found: install Python 3.11 or newer (apt-get install python3 python3-venv)"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$("$python" -V 2>&1) is too old: Peel needs Python 3.11 or newer"
  "$python" -c 'import venv, ensurepip' 2>/dev/null \
    || die "Python's venv module is incomplete: apt-get install python3-venv"
  command -v runuser >/dev/null 2>&1 || die "runuser not found (package util-linux)"
  if [ -n "$wheelhouse" ]; then
    [ -d "$wheelhouse" ] || die "--wheelhouse $wheelhouse is not a directory"
    ls "$wheelhouse"/peel-*.whl >/dev/null 2>&1 \
      || die "--wheelhouse $wheelhouse holds no peel-*.whl (build it with: pip wheel /path/to/peel -w DIR)"
    wheelhouse=$(cd "$wheelhouse" && pwd)
  else
    [ -n "$source_dir" ] || source_dir=$(cd "$HERE/../.." && pwd)
    [ -f "$source_dir/pyproject.toml" ] \
      || die "no Peel checkout at $source_dir (give --source DIR, or --wheelhouse DIR for an offline install)"
  fi
  for unit in $ALL_UNITS; do
    [ -f "$HERE/$unit" ] || die "$HERE/$unit is missing: run install.sh from a Peel checkout or release"
  done
  if [ -e "$CONFIG" ] && ! getent group "$USER_NAME" >/dev/null; then
    die "$CONFIG exists but the group $USER_NAME does not: fix or move it aside first"
  fi
  for value in "$database" "$control" "$app" "$control_cacert" "$advertise"; do
    case "$value" in *'"'*|*'\'*) die "a quote or backslash in '$value': give URLs and paths without them" ;; esac
  done
  if [ -n "$join_token" ] && [ -z "$control" ]; then
    die "--join-token needs --control URL (the control plane's admin API, https://admin-host:9901)"
  fi
  case "$control" in ""|http://*|https://*) ;; *) die "--control must be an https:// URL (http:// on loopback only), not '$control'" ;; esac
  case "$app" in ""|http://*|https://*) ;; *) die "--app must be the local app's http:// URL, not '$app'" ;; esac
  if [ -n "$advertise" ] && { [ -z "$control" ] || [ -n "$database" ] || [ "$role" != sidecar ]; }; then
    die "--advertise is for a sidecar following its control plane: give --role sidecar and --control, not --database"
  fi
  if [ -n "$control_cacert" ]; then
    [ -f "$control_cacert" ] && [ -r "$control_cacert" ] || die "--control-cacert $control_cacert is not a readable file"
  fi
  # The settings file is never rewritten, so it says which role this VM has: a different --role is
  # refused rather than installing units that disagree with it.
  if [ -e "$CONFIG" ]; then
    file_role=$("$python" -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print(tomllib.load(f).get("server", {}).get("role", "gateway"))' "$CONFIG" 2>/dev/null) \
      || die "cannot read $CONFIG as TOML: fix it first"
    if [ "$role_given" = 1 ] && [ "$file_role" != "$role" ]; then
      die "$CONFIG says role = \"$file_role\" but --role is $role: the installer never rewrites the settings; edit it, or move it aside to have one written for $role"
    fi
    role=$file_role
    case "$role" in gateway|sidecar) ;; *) die "$CONFIG: [server] role must be gateway or sidecar, not '$role'" ;; esac
  fi
fi

# -- uninstall ---------------------------------------------------------------------------------------

if [ "$action" != install ]; then
  for unit in $ALL_UNITS; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
    rm -f "$UNIT_DIR/$unit"
  done
  systemctl daemon-reload
  # forget a failed state (a crash, a kill): a later install starts from a clean slate
  # shellcheck disable=SC2086
  systemctl reset-failed $ALL_UNITS >/dev/null 2>&1 || true
  rm -rf "$PREFIX"
  if [ "$action" = purge ]; then
    rm -rf "$CONFIG_DIR" "$STATE_DIR"
    if getent passwd "$USER_NAME" >/dev/null; then userdel "$USER_NAME" || true; fi
    if getent group "$USER_NAME" >/dev/null; then groupdel "$USER_NAME" 2>/dev/null || true; fi
    say "Peel, its settings ($CONFIG_DIR), its data ($STATE_DIR) and its user are removed"
  else
    say "Peel is removed; its settings ($CONFIG_DIR) and data ($STATE_DIR) are kept (--purge removes them)"
  fi
  exit 0
fi

# -- install or upgrade ------------------------------------------------------------------------------

if ! getent passwd "$USER_NAME" >/dev/null; then
  getent group "$USER_NAME" >/dev/null || groupadd --system "$USER_NAME"
  useradd --system --gid "$USER_NAME" --home-dir "$STATE_DIR" --no-create-home \
    --shell /usr/sbin/nologin --comment "Peel API gateway" "$USER_NAME"
  say "created the system user $USER_NAME"
fi

# A new virtualenv per install, then one symlink switch: the running process keeps its files until
# it restarts, and the previous release stays for a rollback (README: "Rolling back").
release=$PREFIX/releases/$(date -u +%Y%m%dT%H%M%SZ)-$$
mkdir -p "$PREFIX/releases"
"$python" -m venv "$release"
if [ -n "$wheelhouse" ]; then
  "$release/bin/pip" install --quiet --no-index --find-links "$wheelhouse" peel
else
  "$release/bin/pip" install --quiet "$source_dir"
fi
# peel.service runs with PYTHONOPTIMIZE=2 and PYTHONPYCACHEPREFIX=/opt/peel/current/pycache, and
# never writes bytecode: compile it here (the standard library and the virtualenv, 10-30 s)
"$release/bin/python" -m gateway.core.bytecode "$release/pycache" \
  || say "warning: the files named above did not compile; the service compiles them at each start"
version=$("$release/bin/python" -c 'from importlib.metadata import version; print(version("peel"))')
previous=$(readlink "$PREFIX/current" 2>/dev/null || true)
ln -sfn "$release" "$PREFIX/current.new" && mv -T "$PREFIX/current.new" "$PREFIX/current"
ln -sfn current/bin "$PREFIX/bin.new" && mv -T "$PREFIX/bin.new" "$PREFIX/bin"
say "installed peel $version in $release"

install -d -m 0750 -o root -g "$USER_NAME" "$CONFIG_DIR"
if [ ! -e "$CONFIG" ]; then
  umask 027
  if [ "$role" = gateway ]; then
    cat > "$CONFIG.new" <<EOF
# Peel's settings (README.md "Settings"), written by deploy/vm/install.sh --role gateway.
# Never overwritten by the installer. After a change: systemctl reload peel (what SIGHUP applies)
# or systemctl restart peel (everything else); a changed bind: re-run install.sh.
# gateway: the public listener faces the network; the admin API stays on loopback.

[database]
# SQLite for one gateway; a fleet shares one PostgreSQL (deploy/vm/README.md)
url = "${database:-sqlite:///$STATE_DIR/peel.db}"

[listeners.public]
bind = "0.0.0.0:8080"

[listeners.admin]
bind = "127.0.0.1:9901"

[server]
role = "gateway"
# one worker process per core this service may use (the production default; 1: a single process)
workers = "auto"
snapshot_path = "$STATE_DIR/snapshot.json"
run_dir = "/run/peel"

[access_log]
# stdout goes to the journal: journalctl -u peel
target = "stdout"
EOF
  else
    cacert_line=
    [ -z "$control_cacert" ] || cacert_line="control_cacert = \"$CONFIG_DIR/control-ca.pem\""
    advertise_line=
    [ -z "$advertise" ] || advertise_line="advertise = \"$advertise\""
    if [ -n "$control" ] && [ -z "$database" ]; then
      # no database credentials on an app VM: the route table comes from the control plane it joined
      source_lines='# the route table comes from the control plane this sidecar joined (identity.json), over
# its admin API, as this identity; no database credentials here
source = "control"'
    else
      source_lines="source = \"database\"

[database]
# where the route table comes from: the fleet's PostgreSQL (install.sh --database URL)
url = \"${database:-sqlite:///$STATE_DIR/peel.db}\""
    fi
    cat > "$CONFIG.new" <<EOF
# Peel's settings (README.md "Settings"), written by deploy/vm/install.sh --role sidecar.
# Never overwritten by the installer. After a change: systemctl reload peel (what SIGHUP applies)
# or systemctl restart peel (everything else); a changed bind: re-run install.sh.
# sidecar: beside the app on this VM; only the east-west listeners, no public or admin listener
# (docs/east-west.md). Control plane: ${control:-none given (peel join --control URL)}

[server]
role = "sidecar"
snapshot_path = "$STATE_DIR/snapshot.json"
run_dir = "/run/peel"
$source_lines

[listeners.outbound]
# the apps on this VM call out through it (HTTP_PROXY, Host routing); loopback only
bind = "127.0.0.1:15001"

[listeners.inbound]
# peer gateways and sidecars call this VM's service here (mTLS), answered by the local app
bind = "0.0.0.0:15443"
mtls = "permissive"
app = "${app:-http://127.0.0.1:8080}"
$advertise_line

[identity]
# this sidecar's key and certificate (peel join); renewed at half life from the control plane
state_dir = "$STATE_DIR/identity"
$cacert_line

[access_log]
# stdout goes to the journal: journalctl -u peel
target = "stdout"
EOF
  fi
  if [ -n "$control_cacert" ]; then
    install -m 0640 -o root -g "$USER_NAME" "$control_cacert" "$CONFIG_DIR/control-ca.pem"
  fi
  chown root:"$USER_NAME" "$CONFIG.new"
  chmod 0640 "$CONFIG.new"
  mv "$CONFIG.new" "$CONFIG"
  say "wrote $CONFIG (role $role)"
else
  say "kept the existing $CONFIG (role $role)"
  if [ -n "$database$app$control_cacert" ]; then
    say "--database, --app and --control-cacert only shape a new settings file: edit $CONFIG instead"
  fi
fi

install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STATE_DIR"

# What the settings say, read by Peel itself (in the state directory, the service's working
# directory, so relative paths mean what they mean to the service): the kind of store, each socket
# unit of the role with the address it must listen on, and whether a needed identity is missing.
facts=$(cd "$STATE_DIR" && "$release/bin/python" -c '
import sys
from gateway.core.settings import load_settings
from gateway.identity.bundle import exists
settings = load_settings(sys.argv[1])
listeners = settings.listeners
if settings.server.source == "control":
    print("store control")
else:
    print("store", "sqlite" if settings.database.url.startswith("sqlite") else "shared")
if settings.server.role == "sidecar":
    if settings.outbound_enabled:
        print("socket peel-outbound.socket", listeners.outbound.bind)
    if listeners.inbound.mtls != "off":
        print("socket peel-inbound.socket", listeners.inbound.bind)
else:
    print("socket peel.socket", listeners.public.bind)
    print("socket peel-admin.socket", listeners.admin.bind)
needed = listeners.inbound.mtls != "off" or settings.server.source == "control"
print("identity", "missing" if needed and not exists(settings.identity.state_dir) else "ok")' "$CONFIG") \
  || die "Peel refused $CONFIG (above): fix it and re-run install.sh"
sockets=$(echo "$facts" | awk '$1 == "socket" { printf "%s%s", sep, $2; sep = " " }')
[ -n "$sockets" ] || die "$CONFIG turns every listener of role $role off: nothing to serve"

# The store: a gateway migrates it; a sidecar leaves the fleet's shared store to the gateways (a newer
# sidecar must not move the fleet's schema under them), migrates only a SQLite store of its own and
# has none when it follows its control plane.
if [ "$role" = gateway ] || echo "$facts" | grep -qx "store sqlite"; then
  (cd "$STATE_DIR" && runuser -u "$USER_NAME" -- "$PREFIX/bin/peel" db upgrade --config "$CONFIG")
fi

if [ -n "$join_token" ]; then
  (cd "$STATE_DIR" && runuser -u "$USER_NAME" -- "$PREFIX/bin/peel" join --control "$control" \
    --token "$join_token" --config "$CONFIG") || die "peel join failed (above): nothing started"
  facts=$(echo "$facts" | sed 's/^identity missing$/identity ok/')
fi

changed_sockets=
for unit in peel.service $sockets; do
  case $unit in
    peel.service)
      # the same service for both roles; it requires the role's socket units
      sed -e "s|^Requires=.*|Requires=$sockets|" -e "s|^After=.*|After=network-online.target $sockets|" \
        "$HERE/$unit" > "$UNIT_DIR/$unit.new" ;;
    *)
      bind=$(echo "$facts" | awk -v unit="$unit" '$1 == "socket" && $2 == unit { print $3 }')
      sed "s|^ListenStream=.*|ListenStream=$bind|" "$HERE/$unit" > "$UNIT_DIR/$unit.new" ;;
  esac
  chmod 0644 "$UNIT_DIR/$unit.new"
  if [ "${unit##*.}" = socket ] && [ -e "$UNIT_DIR/$unit" ] && ! cmp -s "$UNIT_DIR/$unit" "$UNIT_DIR/$unit.new"; then
    changed_sockets="$changed_sockets $unit"
  fi
  mv "$UNIT_DIR/$unit.new" "$UNIT_DIR/$unit"
done
# a socket unit the settings no longer use (a listener turned off)
for unit in $ALL_UNITS; do
  case " peel.service $sockets " in *" $unit "*) continue ;; esac
  if [ -e "$UNIT_DIR/$unit" ]; then
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
    rm -f "$UNIT_DIR/$unit"
    say "removed $unit: $CONFIG does not use it"
  fi
done
systemctl daemon-reload

if echo "$facts" | grep -qx "identity missing"; then
  # The inbound listener and following the control plane need this VM's identity: nothing is
  # enabled until it has one.
  say "installed, not started: the sidecar needs this VM's identity. Get a join token on the"
  say "control plane (peel join-token create --service NAME), then re-run install.sh with"
  say "--control URL --join-token TOKEN, or:"
  say "  cd $STATE_DIR && runuser -u $USER_NAME -- $PREFIX/bin/peel join --control ${control:-https://ADMIN-HOST:9901} --token TOKEN --config $CONFIG"
  say "  systemctl enable --now $sockets peel.service"
  exit 0
fi

if [ -n "$changed_sockets" ]; then
  # New addresses need new sockets: the one moment connections are refused (README: "Changing a bind").
  say "the listening addresses changed: restarting$changed_sockets"
  systemctl stop peel.service
  # shellcheck disable=SC2086
  systemctl restart $changed_sockets
fi
# shellcheck disable=SC2086
systemctl enable --quiet $sockets peel.service
# shellcheck disable=SC2086
systemctl start $sockets
if systemctl is-active --quiet peel.service; then
  systemctl restart peel.service
  say "upgraded and restarted peel.service (${previous:+from $previous })"
else
  systemctl start peel.service
  say "started peel.service"
fi

# Keep the running release and the one before it.
for old in $(ls -1d "$PREFIX"/releases/* | sort | head -n -2); do
  [ "$old" = "$release" ] || rm -rf "$old"
done
say "done: systemctl status peel; journalctl -u peel"
