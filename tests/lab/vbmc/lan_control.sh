#!/bin/sh
# lan_config_program for ipmi_sim: the BMC's LAN parameters (what `ipmitool lan print` shows
# and `ipmitool lan set` changes), kept as one file per parameter in a directory, so they
# start out as the lab's BMC address instead of ipmi_sim's empty defaults and survive a
# restart of the simulator. ipmi_sim calls it as
#   <script> <dir> get <parm> [<parm> ...]        -> prints <parm>:<value> per parameter
#   <script> <dir> set <parm> <value> [...]       (on "commit" of a Set LAN Parameters)
#   <script> <dir> check ip_addr_src <value>      (may the source be set to this?)
# with <parm> one of ip_addr ip_addr_src mac_addr subnet_mask default_gw_ip_addr
# default_gw_mac_addr backup_gw_ip_addr backup_gw_mac_addr. Setting records the value; the
# simulator keeps listening where lan.conf says (the lab's inventory names that address).
# Errors go to stdout (ipmi_sim logs it) with a non-zero exit.
set -u
D="${1:-}"
op="${2:-}"
if [ -z "$D" ] || [ -z "$op" ]; then
    echo "usage: lan_control.sh <dir> get|set|check ..."
    exit 1
fi
shift 2
mkdir -p "$D" || exit 1

known() {
    case "$1" in
    ip_addr | ip_addr_src | mac_addr | subnet_mask | default_gw_ip_addr | default_gw_mac_addr | \
        backup_gw_ip_addr | backup_gw_mac_addr) return 0 ;;
    *) return 1 ;;
    esac
}

fallback() {
    case "$1" in
    ip_addr_src) echo static ;;
    *mac_addr) echo 00:00:00:00:00:00 ;;
    *) echo 0.0.0.0 ;;
    esac
}

case "$op" in
get)
    for p in "$@"; do
        known "$p" || { echo "unknown LAN parameter: $p"; exit 1; }
        if [ -s "$D/$p" ]; then v=$(cat "$D/$p"); else v=$(fallback "$p"); fi
        echo "$p:$v"
    done
    ;;
set)
    while [ $# -gt 0 ]; do
        p="$1"
        known "$p" || { echo "unknown LAN parameter: $p"; exit 1; }
        [ $# -ge 2 ] || { echo "no value for $p"; exit 1; }
        echo "$2" > "$D/$p.new" && mv "$D/$p.new" "$D/$p" || exit 1
        echo "$(date -u +%FT%TZ) set $p $2" >> "$D/changes.log"
        shift 2
    done
    ;;
check)
    while [ $# -gt 0 ]; do
        case "$1 ${2:-}" in
        "ip_addr_src static" | "ip_addr_src dhcp") ;;
        *) echo "unsupported: $1 ${2:-}"; exit 1 ;;
        esac
        shift 2
    done
    ;;
*)
    echo "unknown operation: $op"
    exit 1
    ;;
esac
