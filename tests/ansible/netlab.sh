#!/usr/bin/env bash
# The Ansible test lab: "hosts" that are network namespaces on this machine, each with its own
# address on a private bridge and its own sshd (key auth with a key generated here), so the
# roles deploy over real SSH exactly as to separate machines. Every host gets its own install
# prefix (DIR/hosts/<name>) because they share one filesystem.
#
#   netlab.sh up DIR HOST...    create the lab in DIR (which must exist and be empty), one
#                               namespace per HOST name; writes DIR/ssh/, DIR/lab.env
#                               (NAME_ADDR=... per host, BRIDGE_ADDR) and records everything it
#                               creates under DIR/lab/
#   netlab.sh down DIR          stop every process in the lab's namespaces (by PID, from
#                               `ip netns pids`), the sshds it started (by PID) and the SSH
#                               connection masters under DIR/cp, and delete the namespaces,
#                               veths and the bridge it recorded
#
# Needs root, iproute2 and openssh-server (scripts/ansible-deps.sh installs them).
set -euo pipefail

die() { echo "netlab: $*" >&2; exit 1; }

up() {
  local dir=$1; shift
  [ $# -gt 0 ] || die "up: no hosts named"
  [ -x /usr/sbin/sshd ] || die "/usr/sbin/sshd missing: install openssh-server (scripts/ansible-deps.sh)"
  command -v ssh-keygen >/dev/null || die "ssh-keygen missing: install openssh-client"
  mkdir -p "$dir/lab" "$dir/ssh" "$dir/hosts"
  # Unique names: interface names are limited to 15 bytes.
  local tag
  tag="mfa$(printf '%x' $(( ($$ + RANDOM) % 65536 )))"
  # A /24 out of 10.213.0.0/16 picked at random; refuse one already routed here.
  local net
  for _ in $(seq 50); do
    net="10.213.$(( RANDOM % 250 + 1 ))"
    ip -4 route show | grep -q "^$net\." || break
  done
  echo "$tag" >"$dir/lab/tag"
  local br="${tag}br"
  ip link add "$br" type bridge
  echo "$br" >>"$dir/lab/links"
  ip addr add "$net.1/24" dev "$br"
  ip link set "$br" up
  echo "BRIDGE_ADDR=$net.1" >"$dir/lab.env"

  ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh/id_ed25519" -C netlab
  ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh/host_ed25519" -C netlab-host
  cp "$dir/ssh/id_ed25519.pub" "$dir/ssh/authorized_keys"
  chmod 600 "$dir/ssh/authorized_keys"
  # Privilege separation directory sshd insists on.
  mkdir -p /run/sshd && chmod 0755 /run/sshd

  local i=0 name ns veth addr
  for name in "$@"; do
    i=$((i + 1))
    ns="${tag}-$name"
    veth="${tag}v$i"
    addr="$net.$((10 + i))"
    ip netns add "$ns"
    echo "$ns" >>"$dir/lab/namespaces"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    echo "$veth" >>"$dir/lab/links"
    ip link set "$veth" master "$br" up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" route add default via "$net.1"
    mkdir -p "$dir/hosts/$name"
    cat >"$dir/ssh/sshd-$name.conf" <<CONF
ListenAddress $addr:22
HostKey $dir/ssh/host_ed25519
PidFile none
AuthorizedKeysFile $dir/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
CONF
    # `ip netns exec` execs sshd in place: the pid recorded is sshd's.
    ip netns exec "$ns" /usr/sbin/sshd -D -e -f "$dir/ssh/sshd-$name.conf" \
      </dev/null >>"$dir/lab/sshd-$name.log" 2>&1 &
    echo "$!" >>"$dir/lab/pids"
    echo "$(echo "$name" | tr 'a-z-' 'A-Z_')_ADDR=$addr" >>"$dir/lab.env"
    echo "$(echo "$name" | tr 'a-z-' 'A-Z_')_NS=$ns" >>"$dir/lab.env"
  done

  # Wait until every sshd accepts our key.
  for name in "$@"; do
    addr=$(grep "^$(echo "$name" | tr 'a-z-' 'A-Z_')_ADDR=" "$dir/lab.env" | cut -d= -f2)
    local ok=
    for _ in $(seq 100); do
      if ssh -q -i "$dir/ssh/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o ConnectTimeout=2 "root@$addr" true 2>/dev/null; then
        ok=1; break
      fi
      sleep 0.1
    done
    [ -n "$ok" ] || { cat "$dir/lab/sshd-$name.log" >&2; die "sshd of $name ($addr) does not accept the key"; }
  done
}

down() {
  local dir=$1 ns pid sock
  # SSH connection masters Ansible left behind (ControlPersist) under DIR/cp.
  for sock in "$dir"/cp/*; do
    [ -S "$sock" ] && ssh -o ControlPath="$sock" -O exit netlab >/dev/null 2>&1 || true
  done
  if [ -f "$dir/lab/namespaces" ]; then
    while read -r ns; do
      for sig in TERM KILL; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "-$sig" "$pid" 2>/dev/null || true; done
        for _ in $(seq 50); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.1; done
      done
    done <"$dir/lab/namespaces"
  fi
  if [ -f "$dir/lab/pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$dir/lab/pids"
  fi
  if [ -f "$dir/lab/namespaces" ]; then
    while read -r ns; do ip netns del "$ns" 2>/dev/null || true; done <"$dir/lab/namespaces"
  fi
  if [ -f "$dir/lab/links" ]; then
    while read -r link; do ip link del "$link" 2>/dev/null || true; done <"$dir/lab/links"
  fi
  rm -f "$dir/lab/namespaces" "$dir/lab/links" "$dir/lab/pids"
}

case "${1:-}" in
  up) [ $# -ge 3 ] || die "usage: $0 up DIR HOST..."; dir=$2; shift 2; up "$dir" "$@" ;;
  down) [ $# -eq 2 ] || die "usage: $0 down DIR"; down "$2" ;;
  *) die "usage: $0 up DIR HOST... | down DIR" ;;
esac
