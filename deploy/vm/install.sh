#!/bin/sh
# Install, upgrade or remove Peel on a Debian or Ubuntu VM with systemd (deploy/vm/README.md).
#
#   install.sh [--role gateway|sidecar] [--wheelhouse DIR | --source DIR]
#   install.sh --uninstall          stop and remove Peel; keep /etc/peel and /var/lib/peel
#   install.sh --purge              remove Peel, its settings, its data and its user
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
UNITS="peel.service peel.socket peel-admin.socket"
USER_NAME=peel
HERE=$(cd "$(dirname "$0")" && pwd)
cd /

role=gateway
wheelhouse=
source_dir=
action=install

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

usage() {
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while [ $# -gt 0 ]; do
  case $1 in
    --role) [ $# -ge 2 ] || die "--role needs gateway or sidecar"; role=$2; shift 2 ;;
    --role=*) role=${1#--role=}; shift ;;
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
  for unit in $UNITS; do
    [ -f "$HERE/$unit" ] || die "$HERE/$unit is missing: run install.sh from a Peel checkout or release"
  done
  if [ -e "$CONFIG" ] && ! getent group "$USER_NAME" >/dev/null; then
    die "$CONFIG exists but the group $USER_NAME does not: fix or move it aside first"
  fi
fi

# -- uninstall ---------------------------------------------------------------------------------------

if [ "$action" != install ]; then
  for unit in $UNITS; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
    rm -f "$UNIT_DIR/$unit"
  done
  systemctl daemon-reload
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
version=$("$release/bin/python" -c 'from importlib.metadata import version; print(version("peel"))')
previous=$(readlink "$PREFIX/current" 2>/dev/null || true)
ln -sfn "$release" "$PREFIX/current.new" && mv -T "$PREFIX/current.new" "$PREFIX/current"
ln -sfn current/bin "$PREFIX/bin.new" && mv -T "$PREFIX/bin.new" "$PREFIX/bin"
say "installed peel $version in $release"

install -d -m 0750 -o root -g "$USER_NAME" "$CONFIG_DIR"
if [ ! -e "$CONFIG" ]; then
  if [ "$role" = gateway ]; then
    public_bind=0.0.0.0:8080
    role_note="# gateway: the public listener faces the network; the admin API stays on loopback."
  else
    public_bind=127.0.0.1:8080
    role_note="# sidecar: only the applications on this VM use the listener (loopback). The east-west
# listeners (outbound/inbound) and joining a control plane come with the east-west issue; until
# then a sidecar is this same gateway bound to loopback."
  fi
  umask 027
  cat > "$CONFIG.new" <<EOF
# Peel's settings (README.md "Settings"), written by deploy/vm/install.sh --role $role.
# Never overwritten by the installer. After a change: systemctl reload peel (what SIGHUP applies)
# or systemctl restart peel (everything else); a changed bind also needs the socket unit changed.
$role_note

[database]
# SQLite for one gateway; a fleet shares one PostgreSQL (deploy/vm/README.md)
url = "sqlite:///$STATE_DIR/peel.db"

[listeners.public]
bind = "$public_bind"

[listeners.admin]
bind = "127.0.0.1:9901"

[server]
snapshot_path = "$STATE_DIR/snapshot.json"
run_dir = "/run/peel"

[access_log]
# stdout goes to the journal: journalctl -u peel
target = "stdout"
EOF
  chown root:"$USER_NAME" "$CONFIG.new"
  chmod 0640 "$CONFIG.new"
  mv "$CONFIG.new" "$CONFIG"
  say "wrote $CONFIG (role $role)"
else
  say "kept the existing $CONFIG"
fi

install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STATE_DIR"
(cd "$STATE_DIR" && runuser -u "$USER_NAME" -- "$PREFIX/bin/peel" db upgrade --config "$CONFIG")

# The socket units listen where the settings say.
binds=$("$release/bin/python" -c '
import sys
from gateway.core.settings import load_settings
listeners = load_settings(sys.argv[1]).listeners
print(listeners.public.bind, listeners.admin.bind)' "$CONFIG")
public_bind=${binds% *}
admin_bind=${binds#* }

changed_sockets=
for unit in $UNITS; do
  case $unit in
    peel.socket) sed "s|^ListenStream=.*|ListenStream=$public_bind|" "$HERE/$unit" > "$UNIT_DIR/$unit.new" ;;
    peel-admin.socket) sed "s|^ListenStream=.*|ListenStream=$admin_bind|" "$HERE/$unit" > "$UNIT_DIR/$unit.new" ;;
    *) cp "$HERE/$unit" "$UNIT_DIR/$unit.new" ;;
  esac
  chmod 0644 "$UNIT_DIR/$unit.new"
  if [ "${unit##*.}" = socket ] && [ -e "$UNIT_DIR/$unit" ] && ! cmp -s "$UNIT_DIR/$unit" "$UNIT_DIR/$unit.new"; then
    changed_sockets="$changed_sockets $unit"
  fi
  mv "$UNIT_DIR/$unit.new" "$UNIT_DIR/$unit"
done
systemctl daemon-reload

if [ -n "$changed_sockets" ]; then
  # New addresses need new sockets: the one moment connections are refused (README: "Changing a bind").
  say "the listening addresses changed: restarting$changed_sockets"
  systemctl stop peel.service
  # shellcheck disable=SC2086
  systemctl restart $changed_sockets
fi
systemctl enable --quiet peel.socket peel-admin.socket peel.service
systemctl start peel.socket peel-admin.socket
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
