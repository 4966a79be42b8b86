#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: node_routes
short_description: Routes to the other nodes' pod CIDRs, kindnet-style
version_added: 0.1.0
description:
  - Given every node's pod CIDR and node address, adds to the network namespace the module runs in
    (this node) a route to each other node's pod CIDR via that node's address, so pods on different
    nodes reach each other (what kindnet does on a kind cluster).
  - Routes it adds carry route protocol 98, and only those are ever removed. A route to a node that is no
    longer listed is removed; a node whose address changed gets its route replaced.
  - The entry for this node itself is skipped, recognised by O(node_name) or by its O(nodes[].node_ip)
    being an address of this network namespace.
options:
  state:
    description: V(present) makes the owned routes exactly those for O(nodes); V(absent) removes all owned routes.
    type: str
    choices: [present, absent]
    default: present
  nodes:
    description: Every node of the cluster (this one may be included).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Node name.
        type: str
      pod_cidr:
        description: The node's pod CIDR, for example C(10.244.1.0/24).
        type: str
        required: true
      node_ip:
        description: The node's address, reachable from this node.
        type: str
        required: true
  node_name:
    description: Name of this node, whose entry in O(nodes) gets no route.
    type: str
author:
  - barepod.linux developers (@barepod)
notes:
  - Supports check mode and diff mode.
requirements:
  - Python 3.9 or newer on the managed node (older ones are refused).
  - pyroute2
'''

EXAMPLES = r'''
- name: Route pod traffic between the nodes of the cluster
  barepod.linux.node_routes:
    node_name: "{{ inventory_hostname }}"
    nodes:
      - {name: node-a, pod_cidr: 10.244.0.0/24, node_ip: 172.18.0.2}
      - {name: node-b, pod_cidr: 10.244.1.0/24, node_ip: 172.18.0.3}
'''

RETURN = r'''
routes:
  description: The owned routes after the run.
  returned: always
  type: list
  elements: dict
  sample: [{dst: 10.244.1.0/24, gateway: 172.18.0.3}]
actions:
  description: What was (or in check mode would be) done.
  returned: always
  type: list
  elements: dict
'''

from ansible_collections.barepod.linux.plugins.module_utils import _netlink, _specs
from ansible_collections.barepod.linux.plugins.module_utils._module import run_module
from ansible_collections.barepod.linux.plugins.module_utils._noderoutes import NodeRoutes


def main():
    run_module('node_routes', _specs.node_routes(), NodeRoutes, requires=_netlink.REQUIRES)


if __name__ == '__main__':
    main()
