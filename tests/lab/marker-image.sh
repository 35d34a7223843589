#!/usr/bin/env bash
# Builds the lab's "marker" boot image: Debian's amd64 kernel and a busybox initramfs whose
# init prints `METALFLEET-MARKER <kernel command line>` on the console and powers off. Boot-chain
# tests and benchmarks boot it to prove which iPXE script a VM received.
#
# Usage: tests/lab/marker-image.sh [OUT_DIR]   (prints OUT_DIR; default: a cache directory)
# Output: OUT_DIR/vmlinuz, OUT_DIR/initrd.img. Cached by the kernel package version and the
# hash of this script; a second run is instant.
set -euo pipefail

need_pkgs=()
command -v busybox >/dev/null || need_pkgs+=(busybox-static)
command -v cpio >/dev/null || need_pkgs+=(cpio)
if ((${#need_pkgs[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
busybox_bin=$(command -v busybox)
if ! file -L "$busybox_bin" 2>/dev/null | grep -q static && [ -x /bin/busybox ]; then
    busybox_bin=/bin/busybox
fi

kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$kpkg" ]; then
    apt-get update -qq
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
[ -n "$kpkg" ] || { echo "marker-image: cannot resolve linux-image-amd64" >&2; exit 1; }
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/{print $2}')
self_hash=$(sha256sum "$0" | cut -c1-12)
cache_root=${METALFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/metalfleet}
out=${1:-$cache_root/marker-$kpkg-$kver-$self_hash}

if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ]; then
    echo "$out"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
(cd "$work" && apt-get download -qq "$kpkg" >/dev/null 2>&1) || {
    apt-get update -qq && (cd "$work" && apt-get download -qq "$kpkg" >/dev/null)
}
dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/k"
cp "$work"/k/boot/vmlinuz-* "$out/vmlinuz.tmp"

root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys}
cp "$busybox_bin" "$root/bin/busybox"
for applet in sh mount echo cat poweroff sleep; do ln -s busybox "$root/bin/$applet"; done
cat >"$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t devtmpfs dev /dev 2>/dev/null
echo "METALFLEET-MARKER $(cat /proc/cmdline)" > /dev/console
echo "METALFLEET-MARKER $(cat /proc/cmdline)" > /dev/ttyS0 2>/dev/null
poweroff -f
sleep 5
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.img.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initrd.img.tmp" "$out/initrd.img"
echo "$out"
