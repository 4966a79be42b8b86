#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: ns_sandbox
short_description: Run a pod sandbox (pause process) and its containers in Linux namespaces
version_added: 0.1.0
description:
  - Starts and keeps the processes of a pod, like the pause container and the containers kubelet starts
    through containerd and runc, using only kernel primitives.
  - The sandbox is a tiny statically linked holder process (the pause process) in new pid, net, mount, uts and
    ipc namespaces, with the pod name as hostname. Its network namespace is bind-mounted at
    C(<netns_dir>/barepod-<uid8>) so C(ip netns) and CNI-style tools see it.
  - Each container joins the sandbox's net, ipc and uts namespaces, gets its own mount namespace and its own pid
    namespace (or the sandbox's, with O(share_process_namespace)), enters its root filesystem with C(pivot_root),
    gets its own C(/proc), a minimal C(/dev), containerd's masked and read-only paths, no_new_privs and
    containerd's default capability set, and writes stdout and stderr to
    C(<log_root>/<namespace>_<name>_<uid>/<container>/<restartCount>.log).
  - Processes are fully detached (double fork, setsid, stdio to log files or /dev/null, no inherited file
    descriptors), so the module returns at once and the pod survives it.
  - State is kept in the pod record (sections C(sandbox) and C(containers)) under O(state_root). A process is
    recognised by its pid and start time, so a reused pid is never mistaken for the pod's.
options:
  name:
    description:
      - The pod name (a DNS-1123 subdomain). Also the sandbox's hostname unless O(hostname) is set.
    type: str
    required: true
  namespace:
    description:
      - The pod's Kubernetes namespace (a DNS-1123 label).
    type: str
    default: default
  pod_uid:
    description:
      - The pod uid. Defaults to the uid in the existing pod record, else a uid derived from namespace and name.
      - Named as in M(barepod.linux.chroot_rootfs) and M(barepod.linux.cgroup_limit); O(uid) is an alias.
    type: str
    aliases: [uid]
  state:
    description:
      - V(present) starts what is not running (a dead container is restarted with its restart count increased,
        as kubelet does for restartPolicy Always; a container whose spec changed is replaced; a dead sandbox is
        recreated with all its containers).
      - V(absent) stops the containers and the sandbox (SIGTERM, then SIGKILL after O(grace_period)), removes
        the netns bind mount and this module's sections of the pod record. It succeeds when already gone.
      - V(restarted) stops everything and starts it again.
    type: str
    choices: [present, absent, restarted]
    default: present
  containers:
    description:
      - The pod's containers, fields as in a Pod manifest.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Container name (a DNS-1123 label).
        type: str
        required: true
      rootfs:
        description:
          - Absolute path of the container's root filesystem directory (as prepared by
            M(barepod.linux.chroot_rootfs)). Must be a real directory, not a symlink or a file.
        type: path
        required: true
      command:
        description: Entrypoint argv; the first element is resolved inside the rootfs using the container's PATH.
        type: list
        elements: str
      args:
        description: Arguments appended to O(containers[].command).
        type: list
        elements: str
      env:
        description: Environment variables, as a list of C(name)/C(value) dicts.
        type: list
        elements: dict
      working_dir:
        description:
          - Working directory inside the container (created if missing).
          - Paths under C(/proc) are refused, and the container fails to start when the directory
            resolves outside its root (a symlink to C(/proc/self/fd/N), CVE-2024-21626).
        type: str
        aliases: [workingDir]
      security_context:
        description: The container's securityContext (only the user and group are honoured).
        type: dict
        aliases: [securityContext]
        suboptions:
          run_as_user:
            description: Numeric uid of the container process.
            type: int
            aliases: [runAsUser]
          run_as_group:
            description:
              - Numeric gid of the container process (defaults to O(containers[].security_context.run_as_user)).
            type: int
            aliases: [runAsGroup]
      cgroups:
        description:
          - Cgroup directories (one per hierarchy, as M(barepod.linux.cgroup_limit) returns them) the
            container process joins before it execs, so it starts inside its limits as runc places it.
        type: list
        elements: path
        default: []
  prune_containers:
    description:
      - Stop and forget recorded containers that O(containers) does not list. V(false) leaves them alone,
        for a first call that only converges the sandbox (the pod role does this before networking).
    type: bool
    default: true
  share_process_namespace:
    description:
      - Containers join the sandbox's pid namespace (the pause process is PID 1) instead of each getting their own.
    type: bool
    default: false
    aliases: [shareProcessNamespace]
  namespaces:
    description:
      - Namespaces the sandbox creates, from V(pid), V(net) (or V(network)), V(mnt) (or V(mount)), V(uts), V(ipc).
        Leaving out V(net) is hostNetwork, V(pid) hostPID, V(ipc) hostIPC.
    type: list
    elements: str
    default: [pid, net, mnt, uts, ipc]
  hostname:
    description: The sandbox's hostname; defaults to the pod name (at most 63 characters).
    type: str
  grace_period:
    description: Seconds between SIGTERM and SIGKILL when stopping (terminationGracePeriodSeconds).
    type: float
    default: 30
    aliases: [terminationGracePeriodSeconds]
  pause:
    description:
      - The holder process. V(c) compiles a small static C program with the system C compiler into O(pause_dir)
        on first use (freestanding on x86_64 and aarch64, about 8 KiB resident; else linked with glibc, about
        700 KiB); V(busybox) runs a trap-and-wait loop of the statically linked busybox (no compiler needed,
        about 1.6 MiB); V(auto) tries V(c) and falls back to V(busybox).
    type: str
    choices: [auto, c, busybox]
    default: auto
  pause_dir:
    description: Cache directory for the compiled pause binary.
    type: path
    default: /var/lib/barepod/pause
  netns_dir:
    description: Directory for the netns bind mount (made a shared mount, as C(ip netns add) does).
    type: path
    default: /run/netns
  log_root:
    description: Root of the container log files.
    type: path
    default: /var/log/pods
extends_documentation_fragment:
  - barepod.linux.roots.state_root
author:
  - barepod.linux developers (@barepod)
notes:
  - Needs root (CAP_SYS_ADMIN) and Linux 5.11 or later.
  - Supports check mode and diff mode; a second run with nothing to do reports no change and writes nothing.
  - Log files hold the raw output of the container (no CRI timestamp prefix, as there is no shim).
  - No image metadata is read, so O(containers[].command) (or args) is required.
requirements:
  - Python 3.9 or newer on the managed node (older ones are refused).
  - Linux, root
  - a C compiler (gcc, libc6-dev) for V(pause=c), or busybox-static for V(pause=busybox)
'''

EXAMPLES = r'''
- name: Run the chapter's busybox pod
  barepod.linux.ns_sandbox:
    name: core-k8s
    containers:
      - name: core-k8s
        rootfs: /var/lib/barepod/rootfs/core-k8s/core-k8s
        command: [sleep, "10000"]

- name: Two containers sharing one pid namespace, as a non-root user
  barepod.linux.ns_sandbox:
    name: web
    namespace: demo
    share_process_namespace: true
    containers:
      - name: app
        rootfs: /srv/rootfs/app
        command: [/bin/httpd, -f, -p, "8080"]
        env:
          - name: MODE
            value: demo
        securityContext:
          runAsUser: 1000
      - name: sidecar
        rootfs: /srv/rootfs/sidecar
        command: [sleep, infinity]

- name: Tear the pod's processes down
  barepod.linux.ns_sandbox:
    name: core-k8s
    state: absent
    grace_period: 5
'''

RETURN = r'''
uid:
  description: The pod uid.
  returned: always
  type: str
pid:
  description: Host pid of the sandbox (pause) process.
  returned: when state is present or restarted
  type: int
netns_path:
  description: Path of the netns bind mount of the sandbox.
  returned: when state is present or restarted
  type: str
  sample: /run/netns/barepod-0f1e2d3c
record_path:
  description: Path of the pod record.
  returned: always
  type: str
sandbox:
  description: The sandbox as recorded (pid, starttime, hostname, namespaces, ns_inodes, pause, netns_path) plus its
    current resident memory in KiB (rss_kib).
  returned: when state is present or restarted
  type: dict
containers:
  description: One entry per container (name, pid, starttime, restart_count, spec_hash, log_path, exe, rootfs,
    ns_inodes with the pid, net, mnt, uts and ipc namespace inode numbers).
  returned: when state is present or restarted
  type: list
  elements: dict
actions:
  description: The planned actions (what was done, or in check mode what would be done).
  returned: always
  type: list
  elements: dict
'''

from ansible_collections.barepod.linux.plugins.module_utils import _specs
from ansible_collections.barepod.linux.plugins.module_utils._module import run_module
from ansible_collections.barepod.linux.plugins.module_utils._sandbox import SandboxManager


def main():
    run_module('ns_sandbox', _specs.ns_sandbox(), SandboxManager)


if __name__ == '__main__':
    main()
