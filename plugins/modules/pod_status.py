#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: pod_status
short_description: A pod's status as Kubernetes reports it, from its pod record
version_added: 0.1.0
description:
  - Computes the v1 PodStatus of barepod pods (phase, podIP, podIPs, hostIP, hostIPs, startTime,
    conditions, containerStatuses with state and restartCount, qosClass) from the pod record under
    O(state_root) that the other modules write, and from which recorded processes are still alive.
  - With O(name), keeps the Pod object (O(manifest)) in the record's C(manifest) section, so its labels
    can be selected on, and writes the status to C(status.json) in the record; both only when they differ.
  - Without O(name), lists every pod on the host (read only), like C(kubectl get pods -o wide).
  - C(state=absent) removes the pod record directory once the other modules have torn down their parts.
options:
  name:
    description: Pod name. Omit to list all pods.
    type: str
  namespace:
    description: Pod namespace (with O(name)), or a filter for the listing.
    type: str
  manifest:
    description: The Pod object to record (its metadata and spec). Needs O(name).
    type: dict
  host_ip:
    description: The node's address, reported as C(hostIP) and C(hostIPs).
    type: str
  node:
    description: The node's name, for the C(NODE) column.
    type: str
  selector:
    description: Only return pods whose labels include all of these.
    type: dict
  update:
    description: Write C(status.json) into the pod record when the status changed.
    type: bool
    default: true
  state:
    description: C(present) reports (and records); C(absent) removes the record directory.
    type: str
    choices: [present, absent]
    default: present
  force:
    description: With C(state=absent), remove the record even when other modules still have sections in it.
    type: bool
    default: false
extends_documentation_fragment:
  - barepod.linux.roots.state_root
requirements:
  - Python 3.9 or newer on the managed node (older ones are refused).
author:
  - barepod.linux developers (@barepod)
notes:
  - Supports check mode and diff.
  - Times come from the records, not the clock, so an unchanged pod's status is byte-for-byte the same
    and a converged run writes nothing.
'''

EXAMPLES = r'''
- name: Status of the chapter's pod, as kubectl -o jsonpath would read it
  barepod.linux.pod_status:
    namespace: default
    name: core-k8s
    host_ip: "{{ ansible_default_ipv4.address }}"
  register: pod

- name: Show phase, podIP and hostIP
  ansible.builtin.debug:
    msg: "{{ pod.status.phase }} {{ pod.status.podIP }} {{ pod.status.hostIP }}"

- name: Every pod on the node, like kubectl get pods -o wide
  barepod.linux.pod_status:
    node: "{{ inventory_hostname }}"
  register: pods
'''

RETURN = r'''
status:
  description: The pod's v1 PodStatus (with O(name), when the pod exists).
  returned: when the pod exists
  type: dict
  sample: {phase: Running, podIP: 10.244.0.2, hostIP: 172.18.0.2, startTime: "2026-11-26T01:00:00Z"}
exists:
  description: Whether the pod has a record (with O(name)).
  returned: with name
  type: bool
pod:
  description: The pod (namespace, name, uid, labels, node, status, row).
  returned: when the pod exists
  type: dict
pods:
  description: Pods reported, each with namespace, name, uid, labels, node, status and a wide row.
  returned: always
  type: list
  elements: dict
table:
  description: The pods as the lines of C(kubectl get pods -o wide).
  returned: always
  type: list
  elements: str
'''

from ansible_collections.barepod.linux.plugins.module_utils import _specs
from ansible_collections.barepod.linux.plugins.module_utils._module import run_module
from ansible_collections.barepod.linux.plugins.module_utils._podstatus import PodStatusManager


def main():
    run_module('pod_status', _specs.pod_status(), PodStatusManager)


if __name__ == '__main__':
    main()
