#!/usr/bin/env bash
# Build the barepod kind-style node image offline: debootstrap of Debian bookworm (minbase) with
# the tools a node needs, then `docker import`. No image registry is needed, only a Debian mirror.
#
#   tools/build-node-image.sh [IMAGE]          # default barepod/node:bookworm
#
# Cached: when IMAGE already exists it is reused (FORCE=1 rebuilds). Reproducible: the package
# set, suite and mirror are fixed and recorded as image labels; files are tarred in sorted order
# with clamped mtimes and numeric owners, and logs/caches/ids that differ per build are removed.
# Point DEBIAN_MIRROR at a snapshot.debian.org URL to pin package versions too.
# Environment: DEBIAN_MIRROR (default: the mirror apt uses here, else deb.debian.org),
#   SUITE (bookworm), FORCE (0), WORKDIR (mktemp -d under /var/tmp), SOURCE_DATE_EPOCH.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${1:-${IMAGE:-barepod/node:bookworm}}
SUITE=${SUITE:-bookworm}
FORCE=${FORCE:-0}
PACKAGES=python3,iproute2,iptables,util-linux,procps,busybox-static,kmod,ca-certificates
IMAGE_VERSION=4   # bump when the recipe changes, so cached images built by an older recipe are rebuilt

die() { echo "build-node-image: $*" >&2; exit 1; }
command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "docker is not running (tools/start-dockerd.sh starts it)"

if [ "$FORCE" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  have=$(docker image inspect -f '{{ index .Config.Labels "io.barepod.node.recipe" }}' "$IMAGE" 2>/dev/null || true)
  if [ "$have" = "$IMAGE_VERSION" ]; then
    echo "build-node-image: reusing $IMAGE ($(docker image inspect -f '{{.Id}}' "$IMAGE"))"
    exit 0
  fi
  echo "build-node-image: $IMAGE was built by recipe '${have}', rebuilding with recipe $IMAGE_VERSION"
fi

command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap)"

detect_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
    [ -r "$f" ] || continue
    if [[ $f == *.sources ]]; then
      uri=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) {print $i; exit}}' "$f")
    else
      uri=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) {print $i; exit}}' "$f")
    fi
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  echo http://deb.debian.org/debian
}
MIRROR=${DEBIAN_MIRROR:-$(detect_mirror)}

start=$(date +%s)
WORKDIR=${WORKDIR:-$(mktemp -d /var/tmp/barepod-node.XXXXXX)}
ROOTFS=$WORKDIR/rootfs
cleanup() {
  # debootstrap mounts /proc and /sys in the rootfs while it works: unmount whatever is left there
  # (deepest first) before deleting, and never cross into another file system.
  local m
  for m in $(findmnt -rn -o TARGET 2>/dev/null | grep -F "$ROOTFS/" | sort -r); do umount -l "$m" || true; done
  rm -rf --one-file-system "$WORKDIR"
}
trap cleanup EXIT

echo "build-node-image: debootstrap $SUITE (minbase + $PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" --components=main \
  "$SUITE" "$ROOTFS" "$MIRROR" >"$WORKDIR/debootstrap.log" 2>&1 || {
    tail -n 40 "$WORKDIR/debootstrap.log" >&2; [ -f "$ROOTFS/debootstrap/debootstrap.log" ] &&
    tail -n 40 "$ROOTFS/debootstrap/debootstrap.log" >&2; die "debootstrap failed"; }

# Files made during the build get the suite's Release date as their time (unless SOURCE_DATE_EPOCH is set),
# so the same mirror state gives the same image, byte for byte.
release=$(find "$ROOTFS/var/lib/apt/lists" -maxdepth 1 \( -name '*_InRelease' -o -name '*_Release' \) | sort | head -n1)
rdate=""
if [ -n "$release" ]; then rdate=$(sed -n 's/^Date: //p' "$release" | head -n1); fi
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then EPOCH=$SOURCE_DATE_EPOCH
elif [ -n "$rdate" ]; then EPOCH=$(date -d "$rdate" +%s)
else EPOCH=$(stat -c %Y "$ROOTFS/var/lib/dpkg/status"); fi
# /etc/shadow's "last password change" is the build day; make it the epoch's day.
sed -i -E "s/^([^:]*:[^:]*:)[0-9]+:/\1$((EPOCH / 86400)):/" "$ROOTFS/etc/shadow"
[ -f "$ROOTFS/etc/shadow-" ] && rm -f "$ROOTFS/etc/shadow-"

# Slim it down and drop what differs from build to build.
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
  "$ROOTFS"/var/cache/ldconfig/aux-cache "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
  "$ROOTFS"/usr/share/locale/* "$ROOTFS"/usr/share/lintian "$ROOTFS"/usr/share/linda \
  "$ROOTFS"/var/lib/dpkg/*-old "$ROOTFS"/etc/*- "$ROOTFS"/root/.bash_history
find "$ROOTFS" -xdev -name __pycache__ -type d -prune -exec rm -rf {} +
: >"$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/etc/hostname" "$ROOTFS/etc/resolv.conf" "$ROOTFS/etc/hosts"   # docker provides these
# apt inside the node uses the same mirror; /etc/apt/sources.list as debootstrap wrote it.
echo "deb $MIRROR $SUITE main" >"$ROOTFS/etc/apt/sources.list"
# Everything a node container needs at runtime exists in the image: mount points and state roots.
mkdir -p "$ROOTFS"/run/netns "$ROOTFS"/var/lib/barepod "$ROOTFS"/var/lib/cni "$ROOTFS"/var/log/pods \
  "$ROOTFS"/lib/modules "$ROOTFS"/kind
# The node's start-up: make cgroups and /sys writable the way a kind node has them, then run the command.
# With a private cgroup namespace (docker --cgroupns private) the fresh cgroup mounts show the node's own
# cgroup as their root, so each node has a cgroup tree of its own, as kind nodes do.
cat >"$ROOTFS/usr/local/bin/barepod-node-init" <<'INIT'
#!/bin/sh
# barepod node start-up (the image's ENTRYPOINT; docker --init's tini is PID 1 above it).
warn() { echo "barepod-node-init: $*" >&2; }
if grep -qE '^0::/$|:/$' /proc/self/cgroup && [ -z "$(grep -vE ':/$' /proc/self/cgroup)" ]; then
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    grep -q ' /sys/fs/cgroup cgroup2 ro' /proc/mounts &&
      { umount /sys/fs/cgroup && mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup ||
        mount -t cgroup2 cgroup2 /sys/fs/cgroup || warn "cannot remount cgroup2 rw"; }
  else
    for d in /sys/fs/cgroup/*; do
      c=${d##*/}
      grep -q " $d cgroup ro" /proc/mounts || continue
      [ -L "$d" ] && continue
      case $c in systemd) o=none,name=systemd ;; unified) continue ;; *) o=$c ;; esac
      umount "$d" && mount -t cgroup -o "$o" cgroup "$d" || warn "cannot remount cgroup $c rw"
    done
  fi
fi
# docker's --security-opt systempaths=unconfined (which the Docker API modules cannot set) made by hand:
# the read-only /proc/sys & co. go, so sysctls (ip_forward, ...) can be set inside the node.
for p in /proc/sys /proc/sysrq-trigger /proc/irq /proc/bus /proc/fs; do
  grep -q " $p proc ro" /proc/mounts && { umount "$p" || warn "cannot unmount read-only $p"; }
done
grep -q ' /sys sysfs ro' /proc/mounts && { mount -o remount,rw /sys || warn "cannot remount /sys rw"; }
mkdir -p /run/netns /run/barepod
[ $# -gt 0 ] || set -- /bin/sleep infinity
exec "$@"
INIT
chmod 0755 "$ROOTFS/usr/local/bin/barepod-node-init"
# iptables: the nft backend is the Debian default; keep it, as kind's nodes do when the host uses nft.

# pyroute2 for barepod's modules on the node, the version the collection pins (requirements.txt), installed
# from the package index as a pure-Python wheel into the node's python3 (Debian's python3-pyroute2 is older).
PIP=${PIP:-}
if [ -z "$PIP" ]; then
  if [ -x "$REPO/.venv/bin/pip" ]; then PIP=$REPO/.venv/bin/pip; else PIP="python3 -m pip"; fi
fi
export PYTHONDONTWRITEBYTECODE=1   # no __pycache__ from the checks below
pyver=$(chroot "$ROOTFS" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pyroute2=$(sed -n 's/^\(pyroute2==[0-9.]*\).*/\1/p' "$REPO/requirements.txt" 2>/dev/null | head -n1)
pyroute2=${NODE_PYROUTE2:-${pyroute2:-pyroute2}}
echo "build-node-image: adding $pyroute2 for python$pyver"
$PIP install -q --disable-pip-version-check --no-deps --no-compile --no-warn-script-location \
  --target "$ROOTFS/usr/local/lib/python$pyver/dist-packages" "$pyroute2" >"$WORKDIR/pip.log" 2>&1 ||
  { cat "$WORKDIR/pip.log" >&2; die "pip install $pyroute2 failed"; }
rm -rf "$ROOTFS/usr/local/lib/python$pyver/dist-packages/bin"
find "$ROOTFS/usr/local/lib" -xdev -name __pycache__ -type d -prune -exec rm -rf {} +
chroot "$ROOTFS" python3 -c 'import pyroute2' || die "pyroute2 does not import in the node"

# The packages in the image, for the label and for diffing two builds.
# shellcheck disable=SC2016  # dpkg-query's own format, not shell
{ chroot "$ROOTFS" dpkg-query -W -f '${Package}=${Version}\n'; echo "pip:$pyroute2"; } | LC_ALL=C sort >"$WORKDIR/packages.txt"
pkgsum=$(sha256sum "$WORKDIR/packages.txt" | cut -c1-16)

echo "build-node-image: importing into $IMAGE"
tar -C "$ROOTFS" --one-file-system --sort=name --numeric-owner --mtime="@$EPOCH" --clamp-mtime \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    --xattrs --xattrs-include='security.capability' -cf - . |
  docker import \
    --change 'ENTRYPOINT ["/usr/local/bin/barepod-node-init"]' \
    --change 'CMD ["/bin/sleep", "infinity"]' \
    --change 'ENV container=docker' \
    --change "LABEL io.barepod.node.recipe=$IMAGE_VERSION" \
    --change "LABEL io.barepod.node.suite=$SUITE" \
    --change "LABEL io.barepod.node.packages=$PACKAGES,$pyroute2" \
    --change "LABEL io.barepod.node.dpkg-sha=$pkgsum" \
    --change "LABEL io.barepod.node.epoch=$EPOCH" \
    --message "barepod node image: debootstrap $SUITE minbase + $PACKAGES" \
    - "$IMAGE" >/dev/null

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "build-node-image: built $IMAGE in $(( $(date +%s) - start ))s," \
  "$(( size / 1024 / 1024 )) MiB, $(wc -l <"$WORKDIR/packages.txt") packages, dpkg-sha $pkgsum"
