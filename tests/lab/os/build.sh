#!/usr/bin/env bash
# Builds the lab "OS" the buildout's os.install step writes to a VM's disk, from the build
# host's Debian packages, with no loop mounts:
#   disk.img.gz          a raw disk: MBR (syslinux mbr.bin), partition 1 FAT (syslinux for
#                        SeaBIOS, syslinux.efi as \EFI\BOOT\BOOTX64.EFI for OVMF; the kernel
#                        and initramfs), partition 2 ext4 (the root: busybox, OpenSSH's sshd
#                        and sftp-server, python3 for Ansible's modules, useradd/usermod)
#   vmlinuz              the Debian kernel (also the installer's kernel)
#   installer.cpio.gz    the initramfs: loads drivers, then either mounts the root partition
#                        (`metalfleet.mode=os`, what the disk's boot loader passes) or installs
#                        (`metalfleet.mode=install`: fetches the autoinstall file, writes
#                        disk.img.gz to /dev/vda, stores the node's network settings in the root,
#                        reports `metalfleet.event os.installed` to the rack agent)
#   lab_key, lab_key.pub the lab's SSH key; root's authorized_keys in the image
# The installed system configures its network from /etc/metalfleet/network (written by the
# installer: ADDRESS=ip/prefix, GATEWAY, MAC), else DHCP, and starts sshd on port 22.
#
# Usage: tests/lab/os/build.sh [--out DIR]
# Prints the output directory. Cached by content hash (this script, the kernel and tool
# package versions) like microkernel/build.sh: a second run is instant.
set -euo pipefail
cd "$(dirname "$0")/../../.."

out=
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        *) echo "usage: $0 [--out DIR]" >&2; exit 2 ;;
    esac
done

pkgs=(busybox-static syslinux syslinux-common syslinux-efi mtools dosfstools e2fsprogs fdisk
      openssh-server openssh-client python3.11-minimal libpython3.11-stdlib passwd kmod cpio file)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$kpkg" ] || { apt-get update -qq; kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); }
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/{print $2}')
versions=$(dpkg-query -W -f '${Package}=${Version}\n' "${pkgs[@]}" 2>/dev/null | sort)
hash=$( { cat "$0"; echo "$kpkg $kver"; echo "$versions"; } | sha256sum | cut -c1-16)
cache_root=${METALFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/metalfleet}
out=${out:-$cache_root/lab-os-$hash}
done_files=(vmlinuz installer.cpio.gz disk.img.gz lab_key lab_key.pub)
complete() {
    local f
    for f in "${done_files[@]}"; do [ -s "$out/$f" ] || return 1; done
    [ -f "$out/.hash" ] && [ "$(cat "$out/.hash")" = "$hash" ]
}
# One build at a time (parallel test processes would write the same files); the second run
# waits and then finds the first one's result.
mkdir -p "$cache_root"
exec 9>"$cache_root/.lab-os.lock"
flock 9
if complete; then
    echo "$out"
    exit 0
fi
# Older builds are superseded.
for old in "$cache_root"/lab-os-*; do
    [ -d "$old" ] && [ "$old" != "$out" ] && rm -rf "$old"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq "$kpkg" >/dev/null 2>&1) || { apt-get update -qq; (cd "$work" && apt-get download -qq "$kpkg" >/dev/null); }
dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/k"
modver=$(ls "$work/k/lib/modules")
kmods="$work/k/lib/modules/$modver"

# A binary or library with every library it links (paths preserved), into root $1.
copy_bin() { # root source dest-dir
    local root=$1 src=$2 dst=$3 lib
    mkdir -p "$root/$dst"
    rm -f "$root/$dst/$(basename "$src")"
    cp -L "$src" "$root/$dst/"
    copy_libs "$root" "$src"
}
copy_libs() { # root file
    local root=$1 lib
    for lib in $(ldd "$2" 2>/dev/null | awk '/=>/ {print $3} /^\s*\// {print $1}'); do
        [ -f "$lib" ] || continue
        mkdir -p "$root$(dirname "$lib")"
        [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
    done
}
busybox_into() { # root
    mkdir -p "$1/bin"
    cp /bin/busybox "$1/bin/busybox"
    local applet
    for applet in $(/bin/busybox --list); do
        [ -e "$1/bin/$applet" ] || ln -s busybox "$1/bin/$applet"
    done
}

# ---- The initramfs (boot and installer) ----
ird="$work/initrd"
mkdir -p "$ird"/{sbin,etc,proc,sys,dev,run,tmp,mnt,newroot,lib/modules/"$modver"}
busybox_into "$ird"
copy_bin "$ird" "$(command -v kmod)" sbin
for m in modprobe insmod lsmod depmod; do ln -sf kmod "$ird/sbin/$m"; done
cp "$kmods"/modules.order "$kmods"/modules.builtin "$kmods"/modules.builtin.modinfo "$ird/lib/modules/$modver/"
for w in drivers/virtio drivers/net/virtio_net.ko drivers/net/net_failover.ko net/core/failover.ko \
         drivers/block/virtio_blk.ko drivers/scsi/virtio_scsi.ko drivers/net/ethernet/intel/e1000 \
         fs/ext4 fs/jbd2 fs/mbcache.ko lib/crc16.ko crypto/crc32c_generic.ko arch/x86/crypto/crc32c-intel.ko; do
    [ -e "$kmods/kernel/$w" ] || continue
    mkdir -p "$ird/lib/modules/$modver/kernel/$(dirname "$w")"
    cp -r "$kmods/kernel/$w" "$ird/lib/modules/$modver/kernel/$(dirname "$w")/"
done
depmod -b "$ird" "$modver"
mkdir -p "$ird/usr/share/udhcpc"
cat >"$ird/usr/share/udhcpc/default.script" <<'SCRIPT'
#!/bin/sh
# Configures the interface from udhcpc's environment and remembers the lease for the install.
case "$1" in
    deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
        echo "LEASE_IP=$ip LEASE_MASK=${mask:-24} LEASE_ROUTER=${router%% *}" >/run/lease
        ;;
esac
exit 0
SCRIPT
chmod +x "$ird/usr/share/udhcpc/default.script"
cat >"$ird/init" <<'INIT'
#!/bin/sh
# Lab OS initramfs: drivers, then boot the root partition or install the disk image.
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
exec >/dev/console 2>&1
say() { echo "metalfleet lab-os: $*"; }
arg() { sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
# Buses found by one pass (virtio_pci) bring devices for the next.
for pass in 1 2 3; do
    find /sys/devices -name modalias -exec cat {} + 2>/dev/null | sort -u | xargs -r modprobe -qab 2>/dev/null
done
modprobe -q ext4
mode=$(arg metalfleet.mode)
if [ "$mode" != install ]; then
    root=$(arg metalfleet.root); root=${root:-/dev/vda2}
    n=0
    # commit=1: the buildout power-cycles the node seconds after Ansible wrote its files.
    until mount -t ext4 -o commit=1 "$root" /newroot 2>/dev/null; do
        n=$((n + 1)); [ $n -ge 50 ] && { say "cannot mount $root"; exec sh; }
        sleep 0.2
    done
    say "root $root mounted"
    umount /proc /sys
    exec switch_root /newroot /sbin/init
fi

# Installer.
mkdir -p /run /tmp
mount -t tmpfs tmpfs /run
ip link set lo up
want=$(arg metalfleet.mac | tr 'A-F-' 'a-f:')
boot_if=
for i in /sys/class/net/*; do
    n=${i##*/}; [ "$n" = lo ] && continue
    ip link set "$n" up
    [ -n "$want" ] && [ "$(cat "$i/address")" = "$want" ] && boot_if=$n
done
[ -n "$boot_if" ] || for i in /sys/class/net/*; do n=${i##*/}; [ "$n" != lo ] && { boot_if=$n; break; }; done
mac=$(cat /sys/class/net/"$boot_if"/address)
say "installer: network on $boot_if ($mac)"
until udhcpc -i "$boot_if" -q -f -n -t 10 -T 2 -s /usr/share/udhcpc/default.script; do
    say "no DHCP answer yet"; sleep 2
done
. /run/lease
fail() { say "INSTALL FAILED: $*"; while true; do sleep 3600; done; }
url=$(arg metalfleet.autoinstall)
[ -n "$url" ] || fail "no metalfleet.autoinstall= on the kernel command line"
until wget -q -O /run/autoinstall "$url"; do say "fetching $url failed, retrying"; sleep 3; done
# The autoinstall file sets IMAGE, AGENT_URL, HOSTNAME and optionally ADDRESS/GATEWAY.
. /run/autoinstall
[ -n "${IMAGE:-}" ] || fail "the autoinstall file sets no IMAGE"
say "writing $IMAGE to /dev/vda"
# The rack agent may be restarting (an upgrade, a crash): retry a failed download.
n=0
until wget -q -O - "$IMAGE" | gunzip -c >/dev/vda; do
    n=$((n + 1)); [ $n -ge 20 ] && fail "writing the image"
    say "downloading the image failed (attempt $n), retrying"; sleep 3
done
sync
blockdev --rereadpt /dev/vda || fail "re-reading the partition table"
n=0
until mount -t ext4 /dev/vda2 /mnt 2>/dev/null; do
    n=$((n + 1)); [ $n -ge 50 ] && fail "cannot mount /dev/vda2"; sleep 0.2
done
mkdir -p /mnt/etc/metalfleet
{
    echo "MAC=$mac"
    echo "ADDRESS=${ADDRESS:-$LEASE_IP/$LEASE_MASK}"
    echo "GATEWAY=${GATEWAY:-$LEASE_ROUTER}"
} >/mnt/etc/metalfleet/network
[ -n "${HOSTNAME:-}" ] && echo "$HOSTNAME" >/mnt/etc/hostname
cat /mnt/etc/metalfleet/network
umount /mnt
sync
say "installed; reporting os.installed to ${AGENT_URL}"
until wget -q -O /dev/null --header 'Content-Type: application/json' \
    --post-data "{\"mac\":\"$mac\",\"lines\":[\"metalfleet.event os.installed\"]}" \
    "${AGENT_URL%/}/node/v1/logs"; do
    say "reporting failed, retrying"; sleep 3
done
say "INSTALL DONE: waiting for the reboot"
while true; do sleep 3600; done
INIT
chmod +x "$ird/init"
find "$ird" -type f \( -perm -u+x -o -name '*.so*' \) ! -name '*.ko' ! -name init -exec strip --strip-unneeded {} + 2>/dev/null || true

# ---- The root file system ----
root="$work/root"
mkdir -p "$root"/{sbin,usr/bin,usr/sbin,usr/lib,etc/ssh/sshd_config.d,etc/metalfleet,etc/skel,etc/network/interfaces.d,proc,sys,dev,run,tmp,var/log,var/empty,root/.ssh,home,usr/lib/openssh}
chmod 1777 "$root/tmp"
chmod 700 "$root/root" "$root/root/.ssh"
busybox_into "$root"
copy_bin "$root" /usr/sbin/sshd usr/sbin
copy_bin "$root" /usr/lib/openssh/sftp-server usr/lib/openssh
for t in useradd usermod userdel groupadd groupmod; do copy_bin "$root" "/usr/sbin/$t" usr/sbin; done
copy_bin "$root" /usr/bin/python3.11 usr/bin
ln -s python3.11 "$root/usr/bin/python3"
# The standard library without its tests, GUI and build tooling; compiled modules keep
# Ansible's module start-up bearable under emulation.
tar -C /usr/lib -cf - --exclude='python3.11/test' --exclude='python3.11/idlelib' \
    --exclude='python3.11/tkinter' --exclude='python3.11/ensurepip' --exclude='python3.11/lib2to3' \
    --exclude='python3.11/turtledemo' --exclude='python3.11/pydoc_data' --exclude='python3.11/unittest/test' \
    --exclude='python3.11/config-*' --exclude='python3.11/distutils/tests' python3.11 | tar -C "$root/usr/lib" -xf -
for so in "$root"/usr/lib/python3.11/lib-dynload/*.so; do copy_libs "$root" "/usr/lib/python3.11/lib-dynload/$(basename "$so")"; done
for lib in /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libnss_compat.so.2; do
    [ -f "$lib" ] && { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
done
[ -f /etc/login.defs ] && cp /etc/login.defs "$root/etc/login.defs"
find "$root" -type f \( -perm -u+x -o -name '*.so*' \) -exec strip --strip-unneeded {} + 2>/dev/null || true
ln -s ../bin/sh "$root/usr/bin/sh" 2>/dev/null || true

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
sshd:x:100:65534:sshd:/run/sshd:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
sudo:x:27:
users:x:100:
nogroup:x:65534:
EOF
cat >"$root/etc/shadow" <<'EOF'
root:*:20000:0:99999:7:::
sshd:*:20000:0:99999:7:::
nobody:*:20000:0:99999:7:::
EOF
cat >"$root/etc/gshadow" <<'EOF'
root:*::
sudo:*::
users:*::
nogroup:*::
EOF
chmod 640 "$root/etc/shadow" "$root/etc/gshadow"
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
echo lab-os >"$root/etc/hostname"
echo "Metalfleet lab OS" >"$root/etc/issue"
cat >"$root/etc/ssh/sshd_config" <<'EOF'
# Metalfleet lab OS. The buildout's post-install adds files under sshd_config.d.
Include /etc/ssh/sshd_config.d/*.conf
Port 22
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
Subsystem sftp /usr/lib/openssh/sftp-server
PidFile /run/sshd.pid
EOF
ssh-keygen -q -t ed25519 -N '' -C lab-os-host -f "$root/etc/ssh/ssh_host_ed25519_key"
mkdir -p "$out"
rm -f "$out/lab_key" "$out/lab_key.pub"
ssh-keygen -q -t ed25519 -N '' -C metalfleet-lab -f "$out/lab_key"
cp "$out/lab_key.pub" "$root/root/.ssh/authorized_keys"
chmod 600 "$root/root/.ssh/authorized_keys"

mkdir -p "$root/usr/share/udhcpc"
cat >"$root/usr/share/udhcpc/default.script" <<'SCRIPT'
#!/bin/sh
case "$1" in
    deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
        ;;
esac
exit 0
SCRIPT
chmod +x "$root/usr/share/udhcpc/default.script"
cat >"$root/sbin/init" <<'INIT'
#!/bin/sh
# Lab OS init (PID 1): network from /etc/metalfleet/network (else DHCP), sshd, a console shell.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /run/sshd
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mkdir -p /run/sshd
mount -o remount,rw / 2>/dev/null
exec >/dev/console 2>&1
say() { echo "metalfleet lab-os: $*"; }
hostname "$(cat /etc/hostname)"
ip link set lo up
MAC= ADDRESS= GATEWAY=
[ -f /etc/metalfleet/network ] && . /etc/metalfleet/network
iface=
for i in /sys/class/net/*; do
    n=${i##*/}; [ "$n" = lo ] && continue
    ip link set "$n" up
    [ -n "$MAC" ] && [ "$(cat "$i/address")" = "$MAC" ] && iface=$n
done
[ -n "$iface" ] || for i in /sys/class/net/*; do n=${i##*/}; [ "$n" != lo ] && { iface=$n; break; }; done
if [ -n "$ADDRESS" ]; then
    ip addr add "$ADDRESS" dev "$iface"
    [ -n "$GATEWAY" ] && ip route replace default via "$GATEWAY" dev "$iface"
    say "network: $iface $ADDRESS (static)"
else
    udhcpc -i "$iface" -b -t 10 -T 2 -s /usr/share/udhcpc/default.script
    say "network: $iface (DHCP)"
fi
/usr/sbin/sshd -E /var/log/sshd.log && say "sshd started" || say "sshd did not start"
say "up"
# A BMC power cycle is this system's usual shutdown: keep the disk current.
(while true; do sleep 1; sync; done) &
trap 'sync; umount -a -r 2>/dev/null' TERM
while true; do
    setsid sh -c 'exec sh </dev/console >/dev/console 2>&1'
    sleep 1
done
INIT
chmod +x "$root/sbin/init"

# ---- The disk ----
p1_mib=32
root_mib=$(( $(du -sm "$root" | cut -f1) + 96 ))
disk_mib=$((1 + p1_mib + root_mib))
d="$work/disk.img"
truncate -s "${disk_mib}M" "$d"
printf 'label: dos\nstart=2048, size=%d, type=ef, bootable\nstart=%d, type=83\n' \
    $((p1_mib * 2048)) $(((1 + p1_mib) * 2048)) | sfdisk -q "$d"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$d" bs=440 count=1 conv=notrunc status=none

p1="$work/p1.img"
cmdline="console=ttyS0,115200 metalfleet.mode=os metalfleet.root=/dev/vda2 quiet"
mkfs.vfat -n LABOS -h 2048 -C "$p1" $((p1_mib * 1024)) >/dev/null
cat >"$work/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT labos
TIMEOUT 0
PROMPT 0
LABEL labos
    LINUX /vmlinuz
    INITRD /initrd.img
    APPEND $cmdline
EOF
cp "$work"/k/boot/vmlinuz-* "$work/vmlinuz"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -9) >"$work/initrd.img"
export MTOOLS_SKIP_CHECK=1
mcopy -i "$p1" "$work/vmlinuz" "$work/initrd.img" "$work/syslinux.cfg" ::/
mmd -i "$p1" ::/EFI ::/EFI/BOOT
mcopy -i "$p1" /usr/lib/SYSLINUX.EFI/efi64/syslinux.efi ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$p1" /usr/lib/syslinux/modules/efi64/ldlinux.e64 "$work/syslinux.cfg" ::/EFI/BOOT/
dd if="$p1" of="$d" bs=1M seek=1 conv=notrunc status=none
# Installed in place: the boot sector finds ldlinux.sys through the partition's offset.
syslinux --install --offset $((2048 * 512)) "$d"

p2="$work/p2.img"
mke2fs -q -t ext4 -L labos-root -O ^metadata_csum_seed -d "$root" "$p2" "${root_mib}M" >/dev/null
dd if="$p2" of="$d" bs=1M seek=$((1 + p1_mib)) conv=notrunc status=none

cp "$work/vmlinuz" "$out/vmlinuz.tmp"
cp "$work/initrd.img" "$out/installer.cpio.gz.tmp"
gzip -1 -c "$d" >"$out/disk.img.gz.tmp"
rm -f "$out/.hash"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/installer.cpio.gz.tmp" "$out/installer.cpio.gz"
mv "$out/disk.img.gz.tmp" "$out/disk.img.gz"
echo "$hash" >"$out/.hash"
echo "$out"
