#!/usr/bin/env bash
# Builds the Metalfleet discovery/maintenance microkernel from Debian packages: the kernel of
# `linux-image-amd64`, an initramfs with busybox, kmod and drivers, node-agent, and the
# hardware tools steps use (ipmitool, lldpd, smartmontools, fio, stress-ng, memtester,
# kexec-tools). The same script serves the lab and real deployments.
#
# Usage: microkernel/build.sh [--drivers lab|full] [--out DIR]
#   --drivers lab   virtio and e1000 only (fast to boot under emulation; the default)
#   --drivers full  every Ethernet, storage and IPMI driver of the kernel package
#   --out DIR       where to put vmlinuz + initrd.img (default: a cache directory)
# Prints the output directory. Cached by content hash (this script, the init, node-agent's
# binary, the kernel and tool package versions, the driver set): a second run is instant.
set -euo pipefail
cd "$(dirname "$0")/.."

drivers=lab
out=
while [ $# -gt 0 ]; do
    case "$1" in
        --drivers) drivers=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "usage: $0 [--drivers lab|full] [--out DIR]" >&2; exit 2 ;;
    esac
done
case "$drivers" in lab|full) ;; *) echo "--drivers must be lab or full" >&2; exit 2 ;; esac

# Tools are copied out of the build host's packages, with the libraries they link.
tools=(ipmitool:ipmitool lldpd:lldpd lldpcli:lldpd smartctl:smartmontools fio:fio
       stress-ng:stress-ng memtester:memtester kexec:kexec-tools kmod:kmod cpio:cpio)
missing=()
for t in "${tools[@]}"; do command -v "${t%%:*}" >/dev/null || missing+=("${t##*:}"); done
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static || missing+=(busybox-static file)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release -q -p node-agent --bin node-agent
agent_bin=target/release/node-agent

kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$kpkg" ] || { apt-get update -qq; kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); }
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/{print $2}')
tool_versions=$(dpkg-query -W -f '${Package}=${Version}\n' ipmitool lldpd smartmontools fio stress-ng memtester kexec-tools kmod busybox-static 2>/dev/null | sort)
hash=$( { cat "$0"; sha256sum "$agent_bin"; echo "$kpkg $kver $drivers"; echo "$tool_versions"; } | sha256sum | cut -c1-16)
cache_root=${METALFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/metalfleet}
out=${out:-$cache_root/microkernel-$drivers-$hash}
# One build of a flavour at a time: two concurrent runs (parallel test processes) would write
# the same files and leave a corrupt initrd behind a valid hash. The second waits, then finds
# the first one's result in the cache.
mkdir -p "$cache_root"
exec 9>"$cache_root/.microkernel-$drivers.lock"
flock 9
# Older builds of the same flavour are superseded.
for old in "$cache_root"/microkernel-"$drivers"-*; do
    [ -d "$old" ] && [ "$old" != "$out" ] && rm -rf "$old"
done
if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ] && [ -f "$out/.hash" ] && [ "$(cat "$out/.hash")" = "$hash" ] &&
    gzip -t "$out/initrd.img" 2>/dev/null; then
    echo "$out"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq "$kpkg" >/dev/null 2>&1) || { apt-get update -qq; (cd "$work" && apt-get download -qq "$kpkg" >/dev/null); }
dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/k"
modver=$(ls "$work/k/lib/modules")

root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,var/run,var/lib,root,lib/modules}
ln -s ../run "$root/var/run/lldpd-run" 2>/dev/null || true

# busybox and its applets (existing files win: real tools are copied below).
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# A binary with every library it links (paths preserved), including the dynamic loader.
copy_bin() { # source dest-dir
    local src=$1 dst=$2 lib
    rm -f "$root/$dst/$(basename "$src")"
    cp -L "$src" "$root/$dst/"
    for lib in $(ldd "$src" 2>/dev/null | awk '/=>/ {print $3} /^\s*\// {print $1}'); do
        [ -f "$lib" ] || continue
        mkdir -p "$root$(dirname "$lib")"
        [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
    done
}
copy_bin "$agent_bin" usr/bin
# fio links librbd/ceph/ICU (~100 MB): only in the full image; the lab's disk checks use dd.
lab_tools=(ipmitool lldpd lldpcli smartctl stress-ng memtester kexec kmod)
[ "$drivers" = full ] && lab_tools+=(fio)
for t in "${lab_tools[@]}"; do
    copy_bin "$(command -v "$t")" usr/sbin
done
ln -sf lldpcli "$root/usr/sbin/lldpctl"
for m in modprobe insmod rmmod lsmod depmod modinfo; do ln -sf ../usr/sbin/kmod "$root/sbin/$m"; done
# NSS for user lookups (lldpd drops privileges to _lldpd).
for lib in /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libnss_compat.so.2; do
    [ -f "$lib" ] && { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
done

# Drivers.
kmods="$work/k/lib/modules/$modver"
mkdir -p "$root/lib/modules/$modver"
cp "$kmods"/modules.order "$kmods"/modules.builtin "$kmods"/modules.builtin.modinfo "$root/lib/modules/$modver/"
if [ "$drivers" = lab ]; then
    wanted=(drivers/virtio drivers/net/virtio_net.ko drivers/net/net_failover.ko net/core/failover.ko
            drivers/block/virtio_blk.ko drivers/scsi/virtio_scsi.ko
            drivers/net/ethernet/intel/e1000 drivers/char/ipmi)
else
    wanted=(drivers/virtio drivers/net drivers/block drivers/scsi drivers/ata drivers/nvme drivers/md
            drivers/char/ipmi net/core/failover.ko lib drivers/infiniband/core)
fi
for w in "${wanted[@]}"; do
    [ -e "$kmods/kernel/$w" ] || continue
    mkdir -p "$root/lib/modules/$modver/kernel/$(dirname "$w")"
    cp -r "$kmods/kernel/$w" "$root/lib/modules/$modver/kernel/$(dirname "$w")/"
done
depmod -b "$root" "$modver"
# Debug symbols are most of the size of a release binary and of some libraries.
find "$root" -type f \( -perm -u+x -o -name '*.so*' \) ! -name '*.ko' -exec strip --strip-unneeded {} + 2>/dev/null || true

cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
_lldpd:x:100:101:lldpd:/run/lldpd:/bin/false
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
_lldpd:x:101:
GROUP
mkdir -p "$root/usr/share/udhcpc"
cat >"$root/usr/share/udhcpc/default.script" <<'SCRIPT'
#!/bin/sh
# Configures the interface from udhcpc's environment.
case "$1" in
    deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
        : > /etc/resolv.conf
        for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
        [ -n "$hostname" ] && hostname "$hostname"
        ;;
esac
exit 0
SCRIPT
chmod +x "$root/usr/share/udhcpc/default.script"

cat >"$root/init" <<'INIT'
#!/bin/sh
# Metalfleet microkernel init: drivers, network on the boot interface, lldpd, node-agent.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /run/lldpd /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mkdir -p /run/lldpd
mount -t tmpfs tmpfs /tmp
exec >/dev/console 2>&1
echo "metalfleet microkernel: starting"
# Coldplug: load a driver for every device present, then IPMI (for the BMC's LAN settings).
# Buses found by one pass (virtio_pci) bring devices for the next: three passes.
for pass in 1 2 3; do
    find /sys/devices -name modalias -exec cat {} + 2>/dev/null | sort -u | xargs -r modprobe -qab 2>/dev/null
done
modprobe -qa ipmi_si ipmi_devintf 2>/dev/null
ip link set lo up
want=$(sed -n 's/.*metalfleet\.mac=\([^ ]*\).*/\1/p' /proc/cmdline | tr 'A-F-' 'a-f:')
boot_if=
for i in /sys/class/net/*; do
    n=${i##*/}
    [ "$n" = lo ] && continue
    ip link set "$n" up
    [ -n "$want" ] && [ "$(cat "$i/address")" = "$want" ] && boot_if=$n
done
if [ -z "$boot_if" ]; then
    for i in /sys/class/net/*; do n=${i##*/}; [ "$n" != lo ] && { boot_if=$n; break; }; done
fi
echo "metalfleet microkernel: network on ${boot_if:-nothing}"
until udhcpc -i "$boot_if" -q -f -n -t 10 -T 2 -s /usr/share/udhcpc/default.script; do
    echo "metalfleet microkernel: no DHCP answer yet"; sleep 2
done
# The default control socket (/run/lldpd.socket) is where lldpctl, the node-agent and
# lldp.check look.
lldpd >/dev/null 2>&1 || echo "metalfleet microkernel: lldpd did not start"
while true; do
    node-agent
    echo "metalfleet microkernel: node-agent exited ($?); restarting"
    sleep 2
done
INIT
chmod +x "$root/init"

mkdir -p "$out"
cp "$work"/k/boot/vmlinuz-* "$out/vmlinuz.tmp"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.img.tmp"
gzip -t "$out/initrd.img.tmp" || { echo "built initrd fails its gzip check" >&2; exit 1; }
rm -f "$out/.hash"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initrd.img.tmp" "$out/initrd.img"
echo "$hash" >"$out/.hash"
echo "$out"
