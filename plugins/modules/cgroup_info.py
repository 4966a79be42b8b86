#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: cgroup_info
short_description: Audit a cgroup tree - limits, usage, OOM events and policy violations per pod cgroup
version_added: 0.1.0
description:
  - Walks a cgroup tree (or a subtree, by default C(kubepods)) on cgroup v1, v2 or hybrid hosts with
    C(os.scandir), reading only the files it needs, and returns per cgroup its limits (memory, cpu
    shares/weight, cpu quota/period, pids), usage (memory current and peak, cpu usage, throttling,
    pids), OOM/kill events, process count, and the QoS class, pod uid and container parsed from the
    path (cgroupfs C(kubepods/burstable/pod<uid>/<container>) and systemd C(kubepods-burstable-pod<uid>.slice)).
  - Policy checks, each a parameter, are returned as O(ignore:violations) with the path and the reason -
    C(no_memory_limit), C(memory_limit_above_ceiling), C(pod_limits_exceed_node_memory),
    C(empty_pod_cgroup) (a leak), C(cpu_limit_without_request).
  - Read only; never changes anything.
options:
  path:
    description: Subtree to audit, relative to each hierarchy root. Empty for the whole tree.
    type: str
    default: kubepods
  max_depth:
    description: Do not descend more than this many levels below O(path).
    type: int
  report:
    description: Which cgroups to return in RV(cgroups) - all, only pod and container cgroups, or none.
    type: str
    choices: [all, pods, none]
    default: pods
  require_memory_limit:
    description: Report pod cgroups without a memory limit.
    type: bool
    default: true
  memory_limit_ceiling:
    description: Report pod or container cgroups whose memory limit is above this quantity.
    type: str
  check_node_memory:
    description: Report when the sum of the pod memory limits exceeds the node's memory.
    type: bool
    default: true
  node_memory:
    description: The node's memory as a quantity; default MemTotal from O(meminfo).
    type: str
  meminfo:
    description: Where to read MemTotal.
    type: path
    default: /proc/meminfo
  check_empty_pods:
    description: Report pod cgroups that hold no process (left behind by a pod that is gone).
    type: bool
    default: true
  check_cpu_limit_without_request:
    description: Report cgroups with a cpu quota while shares (weight) are at the minimum.
    type: bool
    default: true
  cgroup_root:
    description: Where the cgroup hierarchies are mounted.
    type: path
    default: /sys/fs/cgroup
  mountinfo:
    description: The mountinfo file used for detection.
    type: path
    default: /proc/self/mountinfo
  hierarchy:
    description: C(auto) detects; C(v1) / C(v2) force a layout (fixture trees).
    type: str
    choices: [auto, v1, v2, hybrid]
    default: auto
author:
  - barepod.linux developers (@barepod)
notes:
  - Supports check mode (it never changes anything).
  - Memory values are in bytes; C(max) means unlimited. cpu usage and throttled time are in microseconds.
requirements:
  - Python 3.9 or newer on the managed node (older ones are refused).
  - Linux with cgroup v1 and/or v2 mounted.
'''

EXAMPLES = r'''
- name: Audit the pods of this node
  barepod.linux.cgroup_info:
    memory_limit_ceiling: 8Gi
  register: audit

- name: Fail on leaked pod cgroups only
  ansible.builtin.assert:
    that: audit.violations | selectattr('reason', 'equalto', 'empty_pod_cgroup') | list | length == 0
'''

RETURN = r'''
exists:
  description: Whether the subtree exists.
  returned: always
  type: bool
hierarchy:
  description: Detected mode and mounts.
  returned: always
  type: dict
summary:
  description:
    - cgroups, pods, memory_limited, memory_unlimited, memory_limits_total, node_memory, violations,
      processes and oom_kills.
  returned: always
  type: dict
violations:
  description: Policy violations, each with path, reason, message and details.
  returned: always
  type: list
  elements: dict
  sample: [{"path": "kubepods/besteffort/pod1", "reason": "no_memory_limit", "message": "pod cgroup has no memory limit"}]
cgroups:
  description: Per cgroup - path, qos_class, pod_uid, container, limits, usage, events, procs.
  returned: always
  type: list
  elements: dict
'''

from ansible_collections.barepod.linux.plugins.module_utils import _specs
from ansible_collections.barepod.linux.plugins.module_utils._module import run_module
from ansible_collections.barepod.linux.plugins.module_utils._cgaudit import CgroupInfo


def main():
    run_module('cgroup_info', _specs.cgroup_info(), CgroupInfo)


if __name__ == '__main__':
    main()
