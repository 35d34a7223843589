#!/usr/bin/env bash
# The Ansible end-to-end scenario (driven by tests/tests/ansible.rs, which owns DIR and tears
# the lab down with `netlab.sh down DIR` whatever happens here):
#
#  1. a lab of 5 hosts (network namespaces with sshd): c1..c3 coordinators, r1 r2 rack agents,
#     and b1, a namespace on the same bridge holding rack r01's devices: its top-of-rack
#     switch (Open vSwitch, userspace datapath, bridge br0 with port p1 where node
#     LAB1R01-000001's eno1 is cabled; rack agent r1 drives it over the OVSDB socket) and
#     node LAB1R01-000003's BMC (ipmi_sim, started before step 5), all stopped by PID when
#     this script exits
#  2. playbooks/site.yml deploys them from the built binaries (stripped copies in
#     DIR/artifacts/v1): init, join, add-learner, promote, rack creation, enrollment,
#     metalfleet-supervise services (no systemd here)
#  0. bad variables (coordinator_id 0) fail before anything is created
#  3. site.yml again: every host reports changed=0; a rack-agent config the binary rejects
#     (rack-agent status --config validates it) fails the run and is not installed
#  4. playbooks/upgrade.yml to different binaries (DIR/artifacts/v2: v1 plus a trailer) while
#     a background poller GETs /v1/cluster from every coordinator: every round must get an
#     answer from at least two of the three (only one is ever down), and afterwards every
#     running coordinator and agent process runs the v2 binary
#  5. tests/ansible/fleet.yml drives the API with the collection's modules (site, rack,
#     project, inventory_import, node, node_nic, network, workflow, workflow_run, rollout;
#     check mode, idempotence), agents check nodes in and execute workflow runs and rollouts
#     (boot.set steps, a failing http.call, a held node.wait paused, resumed and aborted, a
#     run paused, resumed and cancelled), the node module powers LAB1R01-000003 on and off
#     through rack agent r1 and the ipmi_sim BMC (read back with ipmitool from the BMC
#     itself), and node_nic attaches LAB1R01-000001's NIC to a network and detaches it (read
#     back with ovs-vsctl from the switch itself)
#  6. the inventory plugin lists those nodes grouped by site, rack, project, state and tag
#
#   scenario.sh DIR BIN_DIR     BIN_DIR holds coordinator, metalctl and rack-agent
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 DIR BIN_DIR" >&2; exit 2; }
DIR=$(cd "$1" && pwd)
BIN=$2
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
step() { echo; echo "=== $(date +%T) $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

for cmd in ansible-playbook ansible-inventory ssh ssh-keygen curl strip; do
  command -v "$cmd" >/dev/null || fail "$cmd not found: run scripts/ansible-deps.sh (ansible-core, openssh-client, curl, binutils)"
done
[ -x /usr/sbin/sshd ] || fail "/usr/sbin/sshd not found: apt-get install openssh-server (scripts/ansible-deps.sh)"
for cmd in ipmi_sim:openipmi ipmitool:ipmitool ovsdb-server:openvswitch-switch ovs-vswitchd:openvswitch-switch \
  ovs-vsctl:openvswitch-switch ovsdb-tool:openvswitch-switch; do
  command -v "${cmd%%:*}" >/dev/null || fail "${cmd%%:*} not found: apt-get install ${cmd##*:} (scripts/test.sh installs it)"
done

# Processes this script starts in the background, stopped by PID whatever happens (netlab.sh
# down, run by the test afterwards, also kills whatever is left in the namespaces).
POLLER= BMC_PID= VSWITCHD_PID= OVSDB_PID=
cleanup() {
  local pid
  for pid in $POLLER $BMC_PID $VSWITCHD_PID $OVSDB_PID; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

step "lab: 5 namespaces with sshd, and b1 for rack r01's switch and a BMC"
"$HERE/netlab.sh" up "$DIR" c1 c2 c3 r1 r2 b1
# shellcheck source=/dev/null
. "$DIR/lab.env"

step "rack r01's switch: Open vSwitch on b1, bridge br0, port p1"
OVS_DIR="$DIR/ovs1"
OVS_DB="$OVS_DIR/db.sock"
mkdir -p "$OVS_DIR"
ovsdb-tool create "$OVS_DIR/conf.db" /usr/share/openvswitch/vswitch.ovsschema
export OVS_RUNDIR="$OVS_DIR" OVS_DBDIR="$OVS_DIR" OVS_LOGDIR="$OVS_DIR"
# `ip netns exec` execs in place: $! is the daemon's PID.
ip netns exec "$B1_NS" ovsdb-server "--remote=punix:$OVS_DB" "--unixctl=$OVS_DIR/ovsdb-server.ctl" \
  "--log-file=$OVS_DIR/ovsdb-server.log" --no-chdir "$OVS_DIR/conf.db" </dev/null >/dev/null 2>&1 &
OVSDB_PID=$!
for _ in $(seq 100); do [ -S "$OVS_DB" ] && break; sleep 0.1; done
[ -S "$OVS_DB" ] || { cat "$OVS_DIR/ovsdb-server.log"; fail "ovsdb-server made no socket at $OVS_DB"; }
vsctl() { ovs-vsctl "--db=unix:$OVS_DB" --timeout=30 "$@"; }
vsctl --no-wait init
ip netns exec "$B1_NS" ovs-vswitchd "unix:$OVS_DB" "--unixctl=$OVS_DIR/ovs-vswitchd.ctl" \
  "--log-file=$OVS_DIR/ovs-vswitchd.log" --no-chdir </dev/null >/dev/null 2>&1 &
VSWITCHD_PID=$!
vsctl add-br br0 -- set bridge br0 datapath_type=netdev
# The "cable" of LAB1R01-000001's eno1: a veth pair whose switch end is port p1.
ip -n "$B1_NS" link add p1 type veth peer name p1-node
ip -n "$B1_NS" link set p1 up
ip -n "$B1_NS" link set p1-node up
vsctl add-port br0 p1
echo "ovsdb-server pid $OVSDB_PID, ovs-vswitchd pid $VSWITCHD_PID, br0 ports: $(vsctl list-ports br0 | tr '\n' ' ')"

step "artifacts: v1 = stripped build, v2 = v1 with a trailer (a different binary)"
mkdir -p "$DIR/artifacts/v1" "$DIR/artifacts/v2"
for b in coordinator metalctl rack-agent; do
  [ -x "$BIN/$b" ] || fail "$BIN/$b missing"
  strip -o "$DIR/artifacts/v1/$b" "$BIN/$b"
  cp "$DIR/artifacts/v1/$b" "$DIR/artifacts/v2/$b"
  printf '\nmetalfleet-upgrade-test-v2\n' >>"$DIR/artifacts/v2/$b"
done

mkdir -p "$DIR/collections/ansible_collections/metalfleet"
ln -sfn "$ROOT/ansible" "$DIR/collections/ansible_collections/metalfleet/metalfleet"
cat >"$DIR/ansible.cfg" <<CFG
[defaults]
collections_path = $DIR/collections
inventory = $DIR/inventory.yml
host_key_checking = False
retry_files_enabled = False
forks = 10
timeout = 30
local_tmp = $DIR/ansible-tmp
callback_plugins = $HERE/callback_plugins
callbacks_enabled = task_timing
remote_tmp = /tmp/.ansible-\${USER}/tmp
[ssh_connection]
pipelining = True
control_path_dir = $DIR/cp
ssh_args = -o ControlMaster=auto -o ControlPersist=120s -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o IdentitiesOnly=yes -o LogLevel=ERROR
CFG
export ANSIBLE_CONFIG="$DIR/ansible.cfg"
prefix() { echo "$DIR/hosts/$1"; }
cat >"$DIR/inventory.yml" <<INV
all:
  vars:
    ansible_user: root
    ansible_ssh_private_key_file: $DIR/ssh/id_ed25519
    # Interpreter discovery picks a broken pyenv shim on these machines (LAB-NOTES).
    ansible_python_interpreter: /usr/bin/python3
    metalfleet_artifacts_dir: $DIR/artifacts/v1
    metalfleet_site: lab1
  children:
    coordinators:
      hosts:
        c1: {ansible_host: $C1_ADDR, coordinator_id: 1, metalfleet_prefix: $(prefix c1)}
        c2: {ansible_host: $C2_ADDR, coordinator_id: 2, metalfleet_prefix: $(prefix c2)}
        c3: {ansible_host: $C3_ADDR, coordinator_id: 3, metalfleet_prefix: $(prefix c3)}
    rack_agents:
      hosts:
        r1:
          ansible_host: $R1_ADDR
          metalfleet_prefix: $(prefix r1)
          metalfleet_rack: lab1-r01
          metalfleet_switch: {name: lab1-r01-tor, address: 10.213.0.2, driver: simulator}
          metalfleet_bmc_network: 10.99.1.0/24
          # This rack's PXE subnet on the host's interface, with TFTP and HTTP boot.
          metalfleet_subnets:
            - network: ${R1_ADDR%.*}.0/24
              interface: eth0
              server_ip: $R1_ADDR
              router: $BRIDGE_ADDR
              pools: [${R1_ADDR%.*}.100-${R1_ADDR%.*}.150]
              discovery: true
          rack_agent_tftp: {listen: "$R1_ADDR:69"}
          rack_agent_http: {listen: "$R1_ADDR:8080"}
          # The BMC on b1 is ipmi_sim, which refuses cipher suite 17 (LAB-NOTES "IPMI").
          rack_agent_bmc:
            overrides: [{address: "$B1_ADDR", ipmi_cipher_suite: 3, timeout_secs: 5}]
          # The rack's switch: Open vSwitch on b1, driven over its OVSDB socket.
          rack_agent_switches: [{name: lab1-r01-tor, driver: ovs, address: "unix:$OVS_DB", bridge: br0}]
        r2:
          ansible_host: $R2_ADDR
          metalfleet_prefix: $(prefix r2)
          metalfleet_rack: lab1-r02
          metalfleet_bmc_network: 10.99.2.0/24
    controller:
      hosts:
        localhost:
          ansible_connection: local
          ansible_python_interpreter: "{{ ansible_playbook_python }}"
INV
echo "inventory: $DIR/inventory.yml"

recap_changed() { # log -> "host changed" lines from PLAY RECAP
  sed -n '/PLAY RECAP/,$p' "$1" | awk '/ok=/{for(i=1;i<=NF;i++) if ($i ~ /^changed=/) {split($i,a,"="); print $1, a[2]}}'
}

run_play() { # LOG ARGS...: ansible-playbook, its recap printed, its tail on failure
  local log=$1; shift
  if ! ansible-playbook "$@" >"$log" 2>&1; then
    tail -n 120 "$log"
    fail "ansible-playbook $* failed (log $log)"
  fi
  sed -n '/PLAY RECAP/,$p' "$log"
}

expect_fail() { # LOG WANT ARGS...: ansible-playbook must fail and its output contain WANT
  local log=$1 want=$2; shift 2
  if ansible-playbook "$@" >"$log" 2>&1; then fail "ansible-playbook $* succeeded; it must fail (log $log)"; fi
  grep -qF -- "$want" "$log" || { tail -n 40 "$log"; fail "ansible-playbook $* failed without saying: $want"; }
  echo "refused as expected: $want"
}

step "bad variables fail before anything changes"
expect_fail "$DIR/bad-id.log" "coordinator_id must be an integer > 0" metalfleet.metalfleet.site -e '{"coordinator_id": 0}'
[ ! -e "$DIR/hosts/c1/etc/metalfleet" ] || fail "the refused run created $DIR/hosts/c1/etc/metalfleet"

step "site.yml: deploy 3 coordinators and 2 rack agents"
run_play "$DIR/site1.log" metalfleet.metalfleet.site

step "site.yml again: nothing changes"
run_play "$DIR/site2.log" metalfleet.metalfleet.site
changed=$(recap_changed "$DIR/site2.log" | awk '$2 != 0')
[ -z "$changed" ] || fail "second site.yml run changed something: $changed (log $DIR/site2.log)"
[ "$(recap_changed "$DIR/site2.log" | wc -l)" -eq 5 ] || fail "recap of the second run lists $(recap_changed "$DIR/site2.log" | wc -l) hosts, want 5"
echo "second run: changed=0 on all 5 hosts"

step "a rack-agent config the binary rejects is not installed"
before=$(sha1sum <"$DIR/hosts/r2/etc/metalfleet/rack-agent.toml")
expect_fail "$DIR/bad-agent.log" "tftp.bogus" metalfleet.metalfleet.site --limit r2 -e '{"rack_agent_tftp": {"bogus": 1}}'
[ "$(sha1sum <"$DIR/hosts/r2/etc/metalfleet/rack-agent.toml")" = "$before" ] || fail "the rejected config replaced rack-agent.toml"

CA="$DIR/hosts/c1/etc/metalfleet/ca.crt"
TOKEN_FILE="$DIR/hosts/c1/etc/metalfleet/admin.token"
[ -s "$TOKEN_FILE" ] || fail "no admin token at $TOKEN_FILE"

step "upgrade.yml to the v2 binaries while GET /v1/cluster is polled on every coordinator"
# One round = GET /v1/cluster on each of the three coordinators. A round fails when fewer
# than two answer 200: the upgrade restarts one coordinator at a time, so two must serve.
poll_cluster() {
  local round=0 ok addr
  while [ ! -e "$DIR/poll.stop" ]; do
    round=$((round + 1)); ok=0
    for addr in "$C1_ADDR" "$C2_ADDR" "$C3_ADDR"; do
      if curl -sf --max-time 5 --cacert "$CA" -H "Authorization: Bearer $(cat "$TOKEN_FILE")" \
        -o /dev/null "https://$addr:7443/v1/cluster"; then ok=$((ok + 1)); fi
    done
    echo "$round $ok"
  done
}
poll_cluster >"$DIR/poll.log" 2>&1 &
POLLER=$!
run_play "$DIR/upgrade.log" metalfleet.metalfleet.upgrade -e "metalfleet_artifacts_dir=$DIR/artifacts/v2"
touch "$DIR/poll.stop"
wait "$POLLER"
POLLER=
rounds=$(wc -l <"$DIR/poll.log")
short=$(awk '$2 < 2' "$DIR/poll.log" | wc -l)
partial=$(awk '$2 == 2' "$DIR/poll.log" | wc -l)
echo "poller: $rounds rounds, $partial with one coordinator down, $short with fewer than two answers"
[ "$rounds" -ge 10 ] || fail "the poller ran only $rounds rounds"
[ "$short" -eq 0 ] || fail "GET /v1/cluster had fewer than two answers in $short rounds: $(awk '$2 < 2' "$DIR/poll.log" | head -5 | tr '\n' ' ')"
[ "$partial" -ge 1 ] || fail "no round saw a coordinator down: did the upgrade restart anything?"
for h in c1:coordinator c2:coordinator c3:coordinator r1:rack-agent r2:rack-agent; do
  host=${h%%:*} svc=${h##*:}
  pid=$(cat "$DIR/hosts/$host/run/metalfleet/$svc.pid")
  want=$(sha1sum <"$DIR/artifacts/v2/$svc" | cut -d' ' -f1)
  have=$(sha1sum <"/proc/$pid/exe" | cut -d' ' -f1)
  [ "$want" = "$have" ] || fail "$host runs $svc pid $pid with sha1 $have, want the v2 binary $want"
done
echo "all 5 services run the v2 binaries"
cluster=$(curl -sf --cacert "$CA" -H "Authorization: Bearer $(cat "$TOKEN_FILE")" "https://$C1_ADDR:7443/v1/cluster")
voters=$(echo "$cluster" | python3 -c 'import json,sys; c=json.load(sys.stdin); print(sum(1 for m in c["members"] if m["kind"]=="voter"), c["leader"] is not None)')
[ "$voters" = "3 True" ] || fail "after the upgrade: voters/leader = $voters: $cluster"

step "upgrade.yml again: nothing to upgrade"
run_play "$DIR/upgrade2.log" metalfleet.metalfleet.upgrade -e "metalfleet_artifacts_dir=$DIR/artifacts/v2"
changed=$(recap_changed "$DIR/upgrade2.log" | awk '$2 != 0')
[ -z "$changed" ] || fail "a second upgrade run changed something: $changed"

step "a real BMC for node LAB1R01-000003: ipmi_sim on b1 ($B1_ADDR), powered off"
# ipmi_sim's chassis_control is the lab's script: without VBMC_QEMU it only records the power
# in VBMC_STATE_DIR/power (and every call in calls.log).
BMC_DIR="$DIR/bmc1"
BMC_PASSWORD="bmc-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
mkdir -p "$BMC_DIR/chassis" "$BMC_DIR/state"
echo 0 >"$BMC_DIR/chassis/power"
cat >"$BMC_DIR/lan.conf" <<LAN
name "bmc1"
set_working_mc 0x20
  startlan 1
    addr $B1_ADDR 623
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789ab0301
  endlan
  chassis_control "$ROOT/tests/lab/vbmc/chassis_control.sh"
  user 2 true "admin" "$BMC_PASSWORD" admin 10 none md2 md5 straight
LAN
cat >"$BMC_DIR/sim.emu" <<'EMU'
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
EMU
# `ip netns exec` execs ipmi_sim in place: $! is ipmi_sim's PID.
VBMC_STATE_DIR="$BMC_DIR/chassis" ip netns exec "$B1_NS" ipmi_sim -c "$BMC_DIR/lan.conf" \
  -f "$BMC_DIR/sim.emu" -s "$BMC_DIR/state" -n </dev/null >"$BMC_DIR/ipmi_sim.log" 2>&1 &
BMC_PID=$!
bmc_power() { # "on" | "off", as the BMC itself answers (from this host, over the bridge)
  ipmitool -I lanplus -C 3 -N 2 -R 1 -H "$B1_ADDR" -U admin -P "$BMC_PASSWORD" chassis power status \
    | awk '/Chassis Power is/ {print $4}'
}
answer=
for _ in $(seq 100); do
  kill -0 "$BMC_PID" 2>/dev/null || { cat "$BMC_DIR/ipmi_sim.log"; fail "ipmi_sim exited"; }
  answer=$(bmc_power 2>/dev/null || true)
  [ -n "$answer" ] && break
  sleep 0.2
done
[ "$answer" = off ] || { cat "$BMC_DIR/ipmi_sim.log"; fail "the BMC on $B1_ADDR answers '$answer', want off"; }
echo "ipmi_sim pid $BMC_PID answers: power $answer"

step "modules: site, project, inventory_import, node (power too), network, workflow, workflow_run, rollout"
cat >"$DIR/fleet-vars.yml" <<VARS
lab_api_urls: ["https://$C1_ADDR:7443", "https://$C2_ADDR:7443", "https://$C3_ADDR:7443"]
lab_token_file: $TOKEN_FILE
lab_ca_cert: $CA
lab_bmc_address: "$B1_ADDR"
lab_bmc_password: "$BMC_PASSWORD"
lab_bmc_power_file: "$BMC_DIR/chassis/power"
lab_ovs_db: "$OVS_DB"
VARS
run_play "$DIR/fleet.log" "$HERE/fleet.yml" -e "@$DIR/fleet-vars.yml"
# The power tasks ended with the node off; the BMC's own record says so, and that it was
# switched on and off again by the rack agent (chassis_control calls).
[ "$(bmc_power)" = off ] || fail "after fleet.yml the BMC says power $(bmc_power), want off"
grep -qx "set power 1" "$BMC_DIR/chassis/calls.log" && grep -qx "set power 0" "$BMC_DIR/chassis/calls.log" \
  || fail "the BMC was not switched on and off: $(tr '\n' ';' <"$BMC_DIR/chassis/calls.log")"
echo "BMC: powered on and off by rack agent r1 (chassis_control: $(grep -c '^set power' "$BMC_DIR/chassis/calls.log") power changes)"

step "inventory plugin: the nodes the coordinators know"
cat >"$DIR/lab.metalfleet.yml" <<PLUGIN
plugin: metalfleet.metalfleet.nodes
api_url: ["https://$C2_ADDR:7443", "https://$C1_ADDR:7443"]
api_token_file: $TOKEN_FILE
ca_cert: $CA
keyed_groups:
  - key: metalfleet_facts.cpu_model | default('none')
    prefix: cpu
PLUGIN
ansible-inventory -i "$DIR/lab.metalfleet.yml" --list >"$DIR/inventory-list.json" 2>"$DIR/inventory-list.err" \
  || { cat "$DIR/inventory-list.err"; fail "ansible-inventory failed"; }
python3 - "$DIR/inventory-list.json" <<'PY'
import json, sys
def plain(v):
    # ansible-core 2.19 marks strings from inventory plugins untrusted (never templated):
    # `--list` shows them as {"__ansible_unsafe": value}.
    if isinstance(v, dict):
        if set(v) == {'__ansible_unsafe'}:
            return v['__ansible_unsafe']
        return dict((k, plain(x)) for k, x in v.items())
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v
inv = plain(json.load(open(sys.argv[1])))
def hosts(group):
    return sorted(inv.get(group, {}).get('hosts', []))
hv = inv['_meta']['hostvars']
want = {
    'metalfleet': ['LAB1R01-000001', 'LAB1R01-000002', 'LAB1R01-000003', 'LAB1R02-000001'],
    'site_lab1': ['LAB1R01-000001', 'LAB1R01-000002', 'LAB1R01-000003', 'LAB1R02-000001'],
    'rack_lab1_r01': ['LAB1R01-000001', 'LAB1R01-000002', 'LAB1R01-000003'],
    'rack_lab1_r02': ['LAB1R02-000001'],
    'project_web': ['LAB1R01-000001'],
    'state_commissioning': ['LAB1R01-000001'],
    'state_discovered': ['LAB1R01-000002', 'LAB1R01-000003', 'LAB1R02-000001'],
    'tag_gpu': ['LAB1R01-000001'],
    'tag_lab': ['LAB1R01-000001'],
    'tag_storage': ['LAB1R02-000001'],
    'cpu_lab_cpu': ['LAB1R02-000001'],
}
bad = ['%s: %s, want %s' % (g, hosts(g), w) for g, w in want.items() if hosts(g) != w]
n1 = hv.get('LAB1R01-000001', {})
checks = {
    'ansible_host': '10.50.1.11',
    'metalfleet_serial': 'LAB1R01-000001',
    'metalfleet_site': 'lab1',
    'metalfleet_rack': 'lab1-r01',
    'metalfleet_project': 'web',
    'metalfleet_bmc_address': '10.99.1.11',
    'metalfleet_addresses': ['10.50.1.11'],
    'metalfleet_macs': ['52:54:00:00:00:01'],
}
bad += ['LAB1R01-000001 %s = %r, want %r' % (k, n1.get(k), v) for k, v in checks.items() if n1.get(k) != v]
if hv.get('LAB1R02-000001', {}).get('metalfleet_facts', {}).get('cpu_model') != 'lab-cpu':
    bad.append('LAB1R02-000001 facts: %r' % hv.get('LAB1R02-000001', {}).get('metalfleet_facts'))
if bad:
    print('inventory plugin output is wrong:\n  ' + '\n  '.join(bad))
    sys.exit(1)
print('inventory plugin: %d nodes in %d groups' % (len(want['metalfleet']), len([g for g in inv if g != '_meta'])))
PY

step "the BMC and the switch are stopped by PID"
for pid in $BMC_PID $VSWITCHD_PID $OVSDB_PID; do
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  ! kill -0 "$pid" 2>/dev/null || fail "process $pid still runs after SIGTERM"
done
BMC_PID= VSWITCHD_PID= OVSDB_PID=

step "done"
