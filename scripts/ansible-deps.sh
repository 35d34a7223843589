#!/usr/bin/env bash
# Installs what the Ansible collection's tests need when it is missing: ansible-core and
# ansible-lint (pip, into the Python that runs them), OpenSSH server and client (the test
# hosts are network namespaces each running its own sshd), and Vagrant (apt; brings
# vagrant-libvirt) for `vagrant validate`, and the scenario's real BMC and switch (openipmi,
# ipmitool, Open vSwitch). Idempotent; prints what it installed.
set -euo pipefail

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    if apt-get install -y -qq "$@"; then return 0; fi
    # Another engineer's apt-get may hold the dpkg lock: wait and retry.
    echo "apt-get install $* failed (attempt $attempt); retrying in 10 s" >&2
    sleep 10
    apt-get update -qq || true
  done
  echo "could not install $* with apt-get" >&2
  return 1
}

need_apt=()
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh >/dev/null || need_apt+=(openssh-client)
command -v ssh-keygen >/dev/null || need_apt+=(openssh-client)
command -v vagrant >/dev/null || need_apt+=(vagrant)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v curl >/dev/null || need_apt+=(curl)
command -v strip >/dev/null || need_apt+=(binutils)
# The scenario's real BMC and switch for the node power and NIC modules.
command -v ipmi_sim >/dev/null || need_apt+=(openipmi)
command -v ipmitool >/dev/null || need_apt+=(ipmitool)
command -v ovs-vsctl >/dev/null || need_apt+=(openvswitch-switch)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== apt: installing ${need_apt[*]}"
  apt-get update -qq || true
  apt_install "${need_apt[@]}"
fi

PY=${PYTHON:-python3}
need_pip=()
"$PY" -c 'import ansible' 2>/dev/null && command -v ansible-playbook >/dev/null || need_pip+=("ansible-core>=2.16")
command -v ansible-lint >/dev/null || need_pip+=(ansible-lint)
if [ ${#need_pip[@]} -gt 0 ]; then
  echo "== pip: installing ${need_pip[*]}"
  "$PY" -m pip install -q "${need_pip[@]}"
  # pyenv installs console scripts behind shims that exist only after a rehash.
  command -v pyenv >/dev/null && pyenv rehash || true
fi

for cmd in ansible-playbook ansible-inventory ansible-lint ansible-test ssh ssh-keygen vagrant; do
  command -v "$cmd" >/dev/null || { echo "missing after install: $cmd" >&2; exit 1; }
done
[ -x /usr/sbin/sshd ] || { echo "missing after install: /usr/sbin/sshd (openssh-server)" >&2; exit 1; }
echo "ansible deps: $(ansible-playbook --version | sed -n 1p), $(ansible-lint --version 2>/dev/null | sed -n 1p), $(vagrant --version)"
