#!/bin/sh
# chassis_control for ipmi_sim (and the --power-hook of redfish_bmc.py): the virtual BMC's
# "hardware". ipmi_sim calls it as
#   <script> get power            -> prints power:1|0
#   <script> get boot             -> prints boot:pxe|default|cdrom|...
#   <script> set power 1|0 | set reset 1 | set shutdown 1 | set boot <dev>
# State lives in files under $VBMC_STATE_DIR (power, boot, and a log of every call).
#
# With $VBMC_QEMU set (a QEMU command line without -daemonize/-pidfile), power really drives a
# VM: "on" starts it daemonized with its pid in $VBMC_STATE_DIR/qemu.pid, "off" kills that
# pid, "get power" reports whether it is alive, reset/shutdown restart/stop it.
set -u
D="${VBMC_STATE_DIR:?VBMC_STATE_DIR is not set}"
mkdir -p "$D"
echo "$*" >> "$D/calls.log"

qemu_alive() {
    [ -s "$D/qemu.pid" ] && kill -0 "$(cat "$D/qemu.pid")" 2>/dev/null
}

qemu_start() {
    qemu_alive && return 0
    rm -f "$D/qemu.pid"
    # Descriptors 3-9 are the caller's (ipmi_sim's LAN socket, its in-band listener and VM
    # connection): a QEMU that kept them would hold the BMC's ports after the BMC exits.
    # shellcheck disable=SC2086  # VBMC_QEMU is a command line on purpose
    $VBMC_QEMU -daemonize -pidfile "$D/qemu.pid" >>"$D/qemu.log" 2>&1 \
        3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-
}

qemu_stop() {
    qemu_alive || return 0
    pid=$(cat "$D/qemu.pid")
    kill "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null
    rm -f "$D/qemu.pid"
}

power_set() {
    echo "$1" > "$D/power"
    if [ -n "${VBMC_QEMU:-}" ]; then
        if [ "$1" = 1 ]; then qemu_start; else qemu_stop; fi
    fi
}

case "${1:-} ${2:-}" in
"get power")
    if [ -n "${VBMC_QEMU:-}" ]; then
        if qemu_alive; then echo "power:1"; else echo "power:0"; fi
    else
        echo "power:$(cat "$D/power" 2>/dev/null || echo 0)"
    fi
    ;;
"get boot") echo "boot:$(cat "$D/boot" 2>/dev/null || echo default)" ;;
"set power") power_set "${3:-0}" ;;
"set shutdown") power_set 0 ;;
"set reset")
    echo reset >> "$D/resets"
    if [ -n "${VBMC_QEMU:-}" ]; then qemu_stop; qemu_start; fi
    ;;
"set boot") echo "${3:-default}" > "$D/boot" ;;
*) echo "chassis_control: unknown request: $*" >&2; exit 1 ;;
esac
