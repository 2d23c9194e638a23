#!/usr/bin/env bash
# Builds the small i386 Linux guest that the demo and the v86 tests boot, from Debian
# bookworm packages, into vendor/v86/out/:
#   bzImage (linux-image-686, non-PAE), initrd (busybox-static + virtio NIC modules + guest/*),
#   bios.bin and vgabios.bin (seabios), versions.txt (what went in).
# Nothing is installed on this machine: apt runs with its own state under out/apt, so it
# needs neither root nor `dpkg --add-architecture`. Downloads stay in out/apt as the cache.
# Idempotent: does nothing when the outputs exist and this script and guest/ are unchanged.
# The initrd is reproducible (fixed mtimes, sorted, uid 0, gzip -n) for given package versions.
# Needs: apt-get, dpkg-deb, gzip, and cpio or busybox.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${V86_GUEST_OUT:-$here/out}"
mkdir -p "$out"

stamp="$( (cat "${BASH_SOURCE[0]}"; cd "$here/guest" && for f in $(ls | sort); do echo "== $f"; cat "$f"; done) | sha256sum | cut -d' ' -f1)"
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ] &&
  [ -s "$out/bzImage" ] && [ -s "$out/initrd" ] && [ -s "$out/bios.bin" ] && [ -s "$out/vgabios.bin" ]; then
  echo "guest: up to date in $out"
  exit 0
fi

for tool in apt-get apt-cache dpkg-deb gzip; do
  command -v "$tool" >/dev/null || { echo "guest: $tool is missing; this script needs a Debian/Ubuntu host (apt)." >&2; exit 1; }
done

apt_dir="$out/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
# V86_GUEST_MIRROR picks another Debian mirror (e.g. a local one); the keyring still checks it.
mirror="${V86_GUEST_MIRROR:-http://deb.debian.org/debian}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || { echo "guest: $keyring is missing; install debian-archive-keyring." >&2; exit 1; }
echo "deb [arch=i386 signed-by=$keyring] $mirror bookworm main" >"$apt_dir/sources.list"
: >"$apt_dir/status"
apt_opts=(
  -q
  -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
  -o "Dir::State::status=$apt_dir/status" -o Debug::NoLocking=1
  -o APT::Architecture=i386 -o APT::Architectures::=i386
  -o APT::Sandbox::User=root -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
)
# Only bookworm main: everything needed is there (the security index for i386 is flaky).
if ! apt-get "${apt_opts[@]}" update >"$apt_dir/update.log" 2>&1; then
  if [ -z "$(ls "$apt_dir/lists" | grep _Packages || true)" ]; then
    cat "$apt_dir/update.log" >&2
    echo "guest: cannot fetch the Debian package index from $mirror; check network access (or set V86_GUEST_MIRROR)." >&2
    exit 1
  fi
  echo "guest: apt-get update failed, using the cached index" >&2
fi

kernel_pkg="$(apt-cache "${apt_opts[@]}" depends linux-image-686 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')"
[ -n "$kernel_pkg" ] || { echo "guest: cannot resolve linux-image-686 in the index" >&2; exit 1; }
pkgs=("$kernel_pkg" busybox-static seabios)
(
  cd "$apt_dir/debs"
  for p in "${pkgs[@]}"; do
    v="$(apt-cache "${apt_opts[@]}" show "$p" | awk '/^Version:/{print $2; exit}')"
    if ! ls "${p}_"*.deb >/dev/null 2>&1 || ! dpkg-deb -f "$(ls "${p}_"*.deb | head -n1)" Version | grep -qxF "$v"; then
      rm -f "${p}_"*.deb
      echo "guest: downloading $p $v"
      apt-get "${apt_opts[@]}" download "$p" >/dev/null
    fi
  done
)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
: >"$work/versions.txt"
for p in "${pkgs[@]}"; do
  deb="$(ls "$apt_dir/debs/${p}_"*.deb | head -n1)"
  dpkg-deb -x "$deb" "$work/pkg"
  echo "$p $(dpkg-deb -f "$deb" Version)" >>"$work/versions.txt"
done

kver="${kernel_pkg#linux-image-}"
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,lib/modules}
cp "$work/pkg/bin/busybox" "$root/bin/busybox"
# Order matters: each module after the ones it needs (no modules.dep in the .deb).
modules="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net"
: >"$root/etc/modules-order"
for m in $modules; do
  ko="$(find "$work/pkg/lib/modules/$kver" -name "$m.ko*" | head -n1)"
  [ -n "$ko" ] || { echo "guest: module $m not found in $kernel_pkg" >&2; exit 1; }
  case "$ko" in
    *.xz) xz -dc "$ko" >"$root/lib/modules/$m.ko" ;;
    *) cp "$ko" "$root/lib/modules/$m.ko" ;;
  esac
  echo "$m.ko" >>"$root/etc/modules-order"
done
install -m 0755 "$here/guest/init" "$root/init"
install -m 0755 "$here/guest/v86-net" "$root/bin/v86-net"
install -m 0755 "$here/guest/udhcpc.script" "$root/etc/udhcpc.script"
install -m 0644 "$here/guest/profile" "$root/etc/profile"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"

# Fixed timestamps and sorted names make the archive byte-identical across builds.
find "$root" -exec touch -h -d @0 {} +
if command -v cpio >/dev/null; then
  (cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) >"$work/initrd.cpio"
else
  (cd "$root" && find . | LC_ALL=C sort | busybox cpio -o -H newc -R 0:0) >"$work/initrd.cpio"
fi
gzip -n -9 <"$work/initrd.cpio" >"$work/initrd"

cp "$work/pkg/boot/vmlinuz-$kver" "$out/bzImage"
cp "$work/initrd" "$out/initrd"
cp "$work/pkg/usr/share/seabios/bios.bin" "$out/bios.bin"
cp "$work/pkg/usr/share/seabios/vgabios-stdvga.bin" "$out/vgabios.bin"
cp "$work/versions.txt" "$out/versions.txt"
echo "$stamp" >"$out/.stamp"
echo "guest: built $out (initrd $(du -k "$out/initrd" | cut -f1) KiB): $(tr '\n' ';' <"$out/versions.txt")"
