#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: pod_converged
short_description: Tell which steps of the pod role would change, in one process
version_added: 0.1.0
description:
  - Runs the check-mode logic of every module the pod role composes (M(barepod.linux.pod_status),
    M(barepod.linux.chroot_rootfs), M(barepod.linux.ns_sandbox), M(barepod.linux.cgroup_limit),
    M(barepod.linux.veth_net)) in the role's order, with the arguments the role passes to each task,
    feeding each step the outputs of the earlier ones (netns path, container cgroup paths, pod IP).
  - Stops at the first step that would change. That step and every later one are returned in C(run);
    the role runs them as the real module tasks. The steps before it are converged; their check-mode
    results are returned in C(checked), and the role uses them in place of the skipped tasks' results.
  - Never changes anything (it always runs the modules' check mode), so it reports C(changed=false)
    and works the same in check mode. A converged pod then costs one module call instead of nine.
author:
  - barepod.linux developers (@barepod)
options:
  steps:
    description:
      - Step name to the arguments of its module task, as the C(barepod.linux.pod_module_args) filter
        computes them. Steps C(record) and C(status) (pod_status), C(rootfs) and C(hosts) (chroot_rootfs,
        a list, one per container), C(sandbox) and C(containers) (ns_sandbox), C(cgroup_pod) and
        C(cgroup_containers) (cgroup_limit, the latter a list), C(network) (veth_net).
      - C(rootfs) gets C(pod_ips) from the recorded status, C(hosts) from the network step's IP, C(network)
        its C(netns) from the sandbox step, C(containers) their C(cgroups) from the container cgroup steps.
      - One of I(steps) and I(pods) is required.
    type: dict
  pods:
    description:
      - Many pods at once, each as its I(steps); the result is in C(pods), one entry per pod, in order.
      - A playbook converging many pods checks them all in one module call and runs the pod role only
        for the pods with something to do (see the role's C(check_many) entry point).
    type: list
    elements: dict
notes:
  - Other keys of I(steps) (such as C(identity)) are ignored.
requirements:
  - Python 3.9 or newer on the managed node (older ones are refused).
  - pyroute2 (for the network step)
'''

EXAMPLES = r'''
- name: Which steps of this pod would change
  barepod.linux.pod_converged:
    steps: "{{ manifest | barepod.linux.pod_module_args({'subnet': '10.244.0.0/24'}) }}"
  register: pod_check

- name: The sandbox, only when it (or an earlier step) is not converged
  when: "'sandbox' in pod_check.run"
  barepod.linux.ns_sandbox:
    name: core-k8s
    uid: 4b5f0b66-3b7f-4c2d-9f55-0c3a4c7e2f10
'''

RETURN = r'''
pods:
  description: With I(pods), one result per pod (C(converged), C(run), C(checked), C(changes)), in order.
  type: list
  elements: dict
  returned: when pods is given
converged:
  description: Every step is converged (C(run) is empty).
  type: bool
  returned: when steps is given
run:
  description: The steps that must run as real module tasks, in order (the first changing step and all after it).
  type: list
  elements: str
  returned: when steps is given
  sample: [containers, status]
checked:
  description:
    - Check-mode result of each step checked (the converged ones and the first changing one), as the module
      would return it (a list for C(rootfs), C(cgroup_containers) and C(hosts)).
  type: dict
  returned: when steps is given
changes:
  description: The planned actions of the first changing step (at most 20).
  type: list
  elements: dict
  returned: when steps is given
'''

from ansible_collections.barepod.linux.plugins.module_utils import _netlink, _specs
from ansible_collections.barepod.linux.plugins.module_utils._module import run_module
from ansible_collections.barepod.linux.plugins.module_utils._podconverge import PodConverged


def main():
    run_module('pod_converged', _specs.pod_converged(), PodConverged, requires=_netlink.REQUIRES)


if __name__ == '__main__':
    main()
