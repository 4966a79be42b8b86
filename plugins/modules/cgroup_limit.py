#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: cgroup_limit
short_description: Pod and container cgroups with kubelet's resource limits, on cgroup v1, v2 or hybrid hosts
version_added: 0.1.0
description:
  - Creates the kubelet cgroupfs layout C(<parent>/[burstable|besteffort/]pod<uid>[/<container>]) in every
    cgroup hierarchy of the host, writes the limits kubelet would write for the pod's resources, and
    attaches processes.
  - Detects per host whether controllers live on cgroup v1, v2 (unified) or a hybrid from
    C(/proc/self/mountinfo); on v1 it writes C(memory.limit_in_bytes), C(memory.memsw.limit_in_bytes),
    C(memory.swappiness), C(cpu.shares), C(cpu.cfs_quota_us)/C(cpu.cfs_period_us), C(pids.max),
    C(cpuset.cpus)/C(cpuset.mems); on v2 C(memory.max), C(memory.swap.max), C(cpu.weight), C(cpu.max),
    C(pids.max), C(cpuset.cpus)/C(cpuset.mems), enabling controllers in the ancestors'
    C(cgroup.subtree_control). On a hybrid host the cgroup2 mount is used for process placement.
  - Quantities are parsed exactly as the Kubernetes API does (C(100Mi), C(1G), C(129e6), C(250m), C(0.1)).
    cpu shares = milliCPU*1024/1000 clamped to [2, 262144]; quota = milliCPU*period/1000, at least 1000;
    BestEffort pods get 2 shares; v2 weight from shares with runc's current quadratic conversion.
  - Idempotent, values are read back and compared after the kernel's normalisation (page rounding,
    C(max), C(-1)), so a converged run writes nothing.
  - C(state=absent) removes the cgroup (and its child cgroups) from every hierarchy; it refuses while
    processes remain unless O(on_processes) is C(kill) or C(move).
options:
  pod_uid:
    description: The pod's uid; the cgroup is named C(pod<uid>).
    type: str
    required: true
  container:
    description: Manage the container's cgroup below the pod cgroup instead of the pod cgroup.
    type: str
  containers:
    description:
      - The pod spec's containers (each with C(name) and C(resources.requests)/C(resources.limits)).
      - Used to compute the QoS class and, for the pod cgroup, the pod-level values the way kubelet's
        ResourceConfigForPod does; with O(container), that container's values.
    type: list
    elements: dict
  resources:
    description:
      - Requests and limits (C(requests), C(limits), each a dict of C(cpu)/C(memory) quantities) for the
        managed cgroup, as in a container spec. Overrides O(containers) for the values.
    type: dict
  qos_class:
    description: Force the QoS class instead of computing it from the resources.
    type: str
    choices: [Guaranteed, Burstable, BestEffort]
  parent:
    description: Parent of the QoS cgroups, relative to each hierarchy root.
    type: str
    default: kubepods
  memory_limit:
    description: Explicit memory limit (quantity, or C(max)); overrides the one from resources.
    type: str
  swap:
    description:
      - Swap allowed on top of the memory limit (quantity or C(max)).
      - v1 writes memory+swap to C(memory.memsw.limit_in_bytes), v2 writes C(memory.swap.max).
    type: str
  swappiness:
    description: v1 C(memory.swappiness) (0..100). Ignored with a warning on v2.
    type: int
  oom_kill_disable:
    description: v1 only, C(memory.oom_control); a task over the limit waits instead of being OOM-killed.
    type: bool
  pids_max:
    description: C(pids.max), a positive number or C(max).
    type: str
  cpuset_cpus:
    description: C(cpuset.cpus) list such as C(0-1,3).
    type: str
  cpuset_mems:
    description: C(cpuset.mems) list such as C(0).
    type: str
  cpu_period:
    description: CFS period in microseconds (kubelet's default 100000).
    type: int
    default: 100000
  controllers:
    description:
      - Hierarchies to create the cgroup in. Default is cpu, cpuacct, cpuset, memory and pids when the host has
        them; naming one the host lacks is an error.
    type: list
    elements: str
  pids:
    description: Processes to attach (written to C(cgroup.procs) in every hierarchy) after the limits.
    type: list
    elements: int
  state:
    description: present or absent.
    type: str
    choices: [present, absent]
    default: present
  on_processes:
    description: With O(state=absent), what to do with processes still in the cgroup.
    type: str
    choices: [fail, kill, move]
    default: fail
  cgroup_root:
    description: Where the cgroup hierarchies are mounted.
    type: path
    default: /sys/fs/cgroup
  mountinfo:
    description: The mountinfo file used for detection.
    type: path
    default: /proc/self/mountinfo
  hierarchy:
    description:
      - C(auto) detects from O(mountinfo). C(v1) takes C(<cgroup_root>/<controller>) directories,
        C(v2) takes O(cgroup_root) as the unified mount (for fixture trees), C(hybrid) as auto.
    type: str
    choices: [auto, v1, v2, hybrid]
    default: auto
  namespace:
    description: Pod namespace; with O(name), the cgroup paths are recorded in the pod record (section cgroups).
    type: str
  name:
    description: Pod name, see O(namespace).
    type: str
extends_documentation_fragment:
  - barepod.linux.roots.state_root
author:
  - barepod.linux developers (@barepod)
notes:
  - On cgroup v1 the kernel may refuse a memory limit below the current usage (EBUSY); the module reports
    the kernel's error and the usage.
  - Supports check mode and diff (old and new value per file).
requirements:
  - Python 3.9 or newer on the managed node (older ones are refused).
  - Linux with cgroup v1 and/or v2 mounted.
'''

EXAMPLES = r'''
- name: Pod cgroup for the chapter's greedy pod (Burstable, memory 200Mi)
  barepod.linux.cgroup_limit:
    pod_uid: 6a4b1c9e-0000-4000-8000-000000000001
    containers:
      - name: any-old-name-will-do
        resources:
          limits: {memory: 200Mi}
          requests: {memory: 100Mi}

- name: The chapter's experiment - 10 bytes of memory for a shell
  barepod.linux.cgroup_limit:
    pod_uid: chroot0
    memory_limit: "10"
    swappiness: 0
    oom_kill_disable: true
    pids: ["{{ shell_pid }}"]

- name: Remove the pod cgroup, killing what is left in it
  barepod.linux.cgroup_limit:
    pod_uid: 6a4b1c9e-0000-4000-8000-000000000001
    state: absent
    on_processes: kill
'''

RETURN = r'''
cgroup:
  description: The cgroup path relative to each hierarchy root.
  returned: always
  type: str
  sample: kubepods/burstable/pod6a4b1c9e-0000-4000-8000-000000000001
qos_class:
  description: The pod's QoS class.
  returned: always
  type: str
  sample: Burstable
hierarchy:
  description: What was detected (mode v1/v2/hybrid, v1 mounts, unified mount, v2 controllers).
  returned: always
  type: dict
paths:
  description: Controller (or C(unified)) to the cgroup directory.
  returned: state=present
  type: dict
settings:
  description: Effective values read back after writing (normalised, C(max) = unlimited).
  returned: state=present
  type: dict
  sample: {"memory.limit_in_bytes": 209715200, "cpu.shares": 2}
usage:
  description: memory_current, pids_current and the processes in the cgroup.
  returned: state=present
  type: dict
actions:
  description: The planned (and, outside check mode, executed) actions.
  returned: always
  type: list
  elements: dict
removed:
  description: Directories removed.
  returned: state=absent
  type: list
  elements: str
'''

from ansible_collections.barepod.linux.plugins.module_utils import _specs
from ansible_collections.barepod.linux.plugins.module_utils._module import run_module
from ansible_collections.barepod.linux.plugins.module_utils._cgroups import CgroupLimitManager


def main():
    run_module('cgroup_limit', _specs.cgroup_limit(), CgroupLimitManager)


if __name__ == '__main__':
    main()
