#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: chroot_rootfs
short_description: A container root filesystem directory, from host binaries, busybox or a local image, with its mounts
version_added: 0.1.0
description:
  - Declares a container root filesystem directory and converges it, like the chapter's C(chroot.sh)
    (copy programs and their libraries into a box, mount C(/tmp) at C(/data)) done safely and idempotently.
  - "Sources, applied in this order (later ones win on the same path): a local O(image) (a plain or
    compressed tar, a directory, an OCI image layout or a C(docker save) archive, layers applied in order
    with whiteouts); O(busybox) (Debian's busybox-static with a symlink per applet at the path
    C(busybox --list-full) gives); O(binaries), each copied with the ELF interpreter and the full closure
    of its shared libraries, found by reading the ELF files (PT_INTERP, DT_NEEDED, DT_RPATH/DT_RUNPATH with
    $ORIGIN, /etc/ld.so.conf and the multiarch system directories), not by running ldd."
  - Mounts are made on the host under the rootfs, so they are in every mount namespace created afterwards
    (M(barepod.linux.ns_sandbox) mounts C(/proc), C(/dev) and the masked paths inside the container).
    They are bind mounts of host paths (optionally read-only), tmpfs (C(/dev/shm), 64 MiB, nosuid,nodev,noexec by
    default) and the generated C(/etc/hosts), C(/etc/resolv.conf) and C(/etc/hostname), bind-mounted from a
    directory next to the rootfs as kubelet bind-mounts its C(etc-hosts).
  - Every path is resolved inside the rootfs (symlinks re-rooted, C(..) stops at the root); files are
    created relative to directory fds opened with O_NOFOLLOW, and mounts are made on
    C(/proc/self/fd/N) of an O_PATH|O_NOFOLLOW fd, so a symlink such as C(etc -> /) in the rootfs or an
    image never leads out of it.
  - Idempotent. A copied file is up to date when its type, size, mtime and mode equal the source's; a
    changed source is copied again; a converged run writes nothing and reports changed=false. What the
    module put in the rootfs is recorded in a manifest next to it (C(<parent>/.<name>.barepod.json)), so
    a binary removed from O(binaries) takes away the files only it brought.
  - C(state=absent) unmounts everything under the rootfs (deepest first, including mounts a container
    made; lazily as a last resort), then removes the directory, the manifest and the generated files;
    it never deletes across a mount point and succeeds when the rootfs is already gone.
options:
  path:
    description:
      - The rootfs directory. Absolute, at least two levels deep; must not be a symlink or a file.
      - Default C(<rootfs_root>/<pod_uid>/<container>) when O(pod_uid) and O(container) are given.
    type: path
  rootfs_root:
    description: Where rootfs directories go when O(path) is not given.
    type: path
    default: /var/lib/barepod/rootfs
  state:
    description: present or absent.
    type: str
    choices: [present, absent]
    default: present
  binaries:
    description:
      - Host programs to copy (absolute paths, or bare command names looked up in PATH), each at the same
        path in the rootfs, with its ELF interpreter and shared libraries at the paths the loader finds them.
    type: list
    elements: str
    default: []
  busybox:
    description: Install busybox (O(busybox_path)) at C(/bin/busybox) with a symlink for every applet.
    type: bool
    default: false
  busybox_path:
    description: The busybox binary on the host (Debian's busybox-static).
    type: path
    default: /bin/busybox
  image:
    description: A local image (file or directory) to unpack into the rootfs; see O(image_format).
    type: path
  image_format:
    description:
      - C(auto) detects it; C(tar) a root filesystem tar (gzip, bzip2, xz), C(dir) a directory tree,
        C(oci) an OCI image layout (directory or tar), C(docker-archive) the output of C(docker save).
    type: str
    choices: [auto, dir, tar, oci, docker-archive]
    default: auto
  mounts:
    description: Mounts to make under the rootfs.
    type: list
    elements: dict
    default: []
    suboptions:
      type:
        description: C(bind) a host path, or C(tmpfs).
        type: str
        choices: [bind, tmpfs]
        default: bind
      source:
        description: For C(bind), the host path (checked against O(allowed_host_paths) and the protected paths).
        type: path
      target:
        description: Absolute path inside the rootfs (created when missing, resolved inside the rootfs).
        type: str
        required: true
      read_only:
        description: Mount read-only (for C(bind), a bind then a remount,bind,ro).
        type: bool
        default: false
      size:
        description: For C(tmpfs), the size in bytes or as a quantity (C(64Mi)).
        type: str
      options:
        description:
          - Extra flags, from C(ro), C(rw), C(nosuid), C(nodev), C(noexec). For C(tmpfs) the default is
            nosuid, nodev, noexec.
        type: list
        elements: str
  shm_size:
    description: Size of the tmpfs at C(/dev/shm) (nosuid,nodev,noexec); C(0) for none.
    type: str
    default: 64Mi
  etc_files:
    description: Generate and bind-mount C(/etc/hosts), C(/etc/resolv.conf) and (with O(hostname)) C(/etc/hostname).
    type: bool
    default: true
  hostname:
    description: The pod's hostname (its name); adds the pod IP line to C(/etc/hosts) and writes C(/etc/hostname).
    type: str
  subdomain:
    description: The pod's subdomain; the hosts line becomes C(<ip> <hostname>.<subdomain> <hostname>).
    type: str
  pod_ips:
    description: The pod's IP addresses for C(/etc/hosts) (when known; omitted before networking).
    type: list
    elements: str
  host_aliases:
    description: Extra C(/etc/hosts) entries, as the pod spec's hostAliases.
    type: list
    elements: dict
    suboptions:
      ip:
        description: The address.
        type: str
        required: true
      hostnames:
        description: Names for it.
        type: list
        elements: str
        required: true
  dns:
    description:
      - The pod's DNS config for C(/etc/resolv.conf). Default is the host's resolv.conf (dnsPolicy
        Default), with a loopback-only systemd-resolved stub replaced by its upstream servers.
    type: dict
    suboptions:
      nameservers:
        description: Name server addresses.
        type: list
        elements: str
      searches:
        description: Search domains.
        type: list
        elements: str
      options:
        description: Resolver options (C(ndots:5)).
        type: list
        elements: str
  allowed_host_paths:
    description:
      - "The hostPath allowlist. When set, a bind source (after realpath) must be at or under one of these.
        Whatever this says, C(/), the protected paths (C(/proc), C(/sys), C(/dev), C(/etc), C(/boot),
        C(/var/lib), C(/run), C(/var/run), the docker, containerd, cri-o and podman sockets) and everything
        under them, and any ancestor of them (C(/var)) are refused, unless an entry that is itself at or
        under the protected path (or names the source exactly) covers the source."
    type: list
    elements: path
    default: []
  namespace:
    description: Pod namespace; with O(name), the rootfs is recorded in the pod record (section C(rootfs)).
    type: str
  name:
    description: Pod name, see O(namespace).
    type: str
  container:
    description:
      - Container name under which the pod record keeps this rootfs (default the directory name), and the
        last component of the default O(path).
    type: str
  pod_uid:
    description: The pod's uid, checked against (or stored in) the pod record.
    type: str
extends_documentation_fragment:
  - barepod.linux.roots.state_root
author:
  - barepod.linux developers (@barepod)
notes:
  - Supports check mode and diff (files to add, replace or remove, the image fingerprint, mounts).
  - Mounts live in the host's mount namespace; they are not in the manifest of a mount namespace created
    before them.
  - Libraries found through an ld.so.conf directory that is not a system directory are placed at that
    path but the rootfs has no ld.so.cache; give such programs a DT_RUNPATH or copy the library by hand.
requirements:
  - Python 3.9 or newer on the managed node (older ones are refused).
  - Linux, root (mount(2), chown).
  - busybox-static for O(busybox).
'''

EXAMPLES = r'''
- name: The chapter's box - bash, ls, ps and kill with their libraries, the host's /tmp at /data
  barepod.linux.chroot_rootfs:
    path: /home/namespace/box
    binaries: [/bin/bash, /bin/ls, /usr/bin/ps, /usr/bin/kill]
    mounts:
      - source: /tmp
        target: /data

- name: A busybox rootfs for the pod's container (what docker.io/busybox:latest resolves to here)
  barepod.linux.chroot_rootfs:
    path: /var/lib/barepod/rootfs/{{ pod_uid }}/busybox
    busybox: true
    hostname: core-k8s
    pod_ips: ["10.244.0.5"]
    mounts:
      - source: /srv/shared
        target: /data
        read_only: true

- name: Unpack a docker save archive
  barepod.linux.chroot_rootfs:
    path: /var/lib/barepod/rootfs/{{ pod_uid }}/app
    image: /srv/images/app.tar

- name: Remove it (unmounts first)
  barepod.linux.chroot_rootfs:
    path: /home/namespace/box
    state: absent
'''

RETURN = r'''
path:
  description: The rootfs directory.
  returned: always
  type: str
  sample: /home/namespace/box
manifest:
  description: Where the module records what it put in the rootfs.
  returned: always
  type: str
  sample: /home/namespace/.box.barepod.json
files:
  description: Number of paths the binaries, busybox and mount point directories provide.
  returned: always
  type: int
mounts:
  description: The mounts under the rootfs as declared (type, source, target, read_only).
  returned: always
  type: list
  elements: dict
record:
  description: The pod record file, when O(namespace) and O(name) are given.
  returned: when namespace and name are given
  type: str
  sample: /run/barepod/pods/default_core-k8s/record.json
actions:
  description:
    - The planned (and, outside check mode, executed) actions
      (add, replace, remove, extract, write, mount, unmount, record).
  returned: always
  type: list
  elements: dict
  sample: [{"action": "add", "target": "/bin/ls", "kind": "copy", "source": "/usr/bin/ls", "by": ["/bin/ls"]}]
'''

from ansible_collections.barepod.linux.plugins.module_utils import _specs
from ansible_collections.barepod.linux.plugins.module_utils._module import run_module
from ansible_collections.barepod.linux.plugins.module_utils._rootfs import ChrootRootfs


def main():
    run_module('chroot_rootfs', _specs.chroot_rootfs(), ChrootRootfs)


if __name__ == '__main__':
    main()
