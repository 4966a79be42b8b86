#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: veth_net
short_description: Attach a pod's network namespace to a node bridge, like the CNI bridge and host-local plugins
version_added: 0.1.0
description:
  - Gives a pod sandbox its network, the way the CNI C(bridge) plugin with C(host-local) IPAM does,
    through netlink (pyroute2) calls instead of plugins.
  - In the network namespace the module runs in (the node), ensures a bridge (default C(cni0)) holding the
    gateway address of the pod CIDR, a veth pair whose host side has a name derived from the pod uid,
    hairpin mode on the bridge port, C(net.ipv4.ip_forward=1), and (O(ip_masq)) the bridge plugin's
    masquerade chain C(CNI-<hash>) in the nat table, applied as one C(iptables-restore --noflush) batch.
  - Inside the pod's network namespace, ensures C(lo) up, O(ifname) with the pod address, the MTU and a
    default route via the gateway.
  - Addresses come from an IPAM store in the CNI host-local on-disk format
    (C(<data_dir>/<network>/<ip>) holding C(<container id>\r\n<ifname>), C(last_reserved_ip.0), a C(lock)
    file), allocated round-robin like host-local under the same lock, so host-local and this module can
    share a network directory.
  - Converges. A repeated run keeps the same address and reports no change. Drift (a missing address,
    route or veth) is reported in check mode and repaired otherwise.
  - O(state=absent) deletes the veth, releases the address and removes the masquerade rules. It is safe to
    repeat and works when the network namespace or the pod record is already gone.
options:
  state:
    description: Whether the pod is attached (V(present)) or detached (V(absent)).
    type: str
    choices: [present, absent]
    default: present
  pod_uid:
    description:
      - The pod uid (named as in the other pod modules; O(uid) is an alias). The host-side veth name and the
        default network namespace path
        (C(/run/netns/barepod-<first 8 of uid>)) are derived from it.
      - Required with O(state=absent). Omitted with O(state=present), only the node side is converged
        (the bridge with the gateway address of O(subnet), up, and C(net.ipv4.ip_forward)), for a node
        that has no pod yet; then O(namespace), O(name), O(netns) and O(ip) must not be given.
    type: str
    aliases: [uid]
  container_id:
    description:
      - The id written into the IPAM files and the masquerade comment (CNI_CONTAINERID).
      - Defaults to O(pod_uid).
    type: str
  namespace:
    description: The pod's Kubernetes namespace; with O(name), selects the pod record to update.
    type: str
  name:
    description: The pod's name; with O(namespace), the pod record's section C(network) is written.
    type: str
  netns:
    description:
      - Path of the pod's network namespace (a bind mount such as C(/run/netns/barepod-1234abcd)).
      - Defaults to the sandbox's netns from the pod record, then to C(/run/netns/barepod-<uid8>).
    type: path
  network:
    description: Network name; the IPAM directory is O(data_dir)/O(network) and the masquerade comment names it.
    type: str
    default: barepod
  subnet:
    description: The node's pod CIDR, for example C(10.244.0.0/24). Required with O(state=present).
    type: str
  range_start:
    description: First address to allocate (host-local C(rangeStart)); default the subnet's first address.
    type: str
  range_end:
    description: Last address to allocate (host-local C(rangeEnd)); default the last address before broadcast.
    type: str
  gateway:
    description:
      - Gateway address, put on the bridge and used as the pod's default route.
      - Defaults to the subnet's first address.
    type: str
  ip:
    description: Ask for this exact address. Fails when another pod holds it.
    type: str
  bridge:
    description: The node bridge.
    type: str
    default: cni0
  ifname:
    description: Interface name inside the pod (CNI_IFNAME).
    type: str
    default: eth0
  host_ifname:
    description: Host-side veth name; default C(veth) + 11 hex digits of sha256(uid).
    type: str
  mtu:
    description: MTU of the veth pair (and of the bridge when the module creates it).
    type: int
    default: 1500
  hairpin_mode:
    description: Set hairpin mode on the bridge port, so a pod can reach itself through a service address.
    type: bool
    default: true
  ip_masq:
    description: Masquerade traffic from the pod leaving the pod CIDR (the bridge plugin's C(ipMasq)).
    type: bool
    default: true
  ip_forward:
    description: Ensure C(net.ipv4.ip_forward=1) in the node's network namespace.
    type: bool
    default: true
  data_dir:
    description: IPAM root (host-local C(dataDir)).
    type: path
    default: /var/lib/cni/networks
  gc:
    description:
      - Also release every allocation of O(network) whose pod is gone (no pod record with that uid under
        O(state_root) and no host-side veth named after it), and remove the masquerade chains of such pods.
      - Only for networks that C(veth_net) alone manages. Pods attached by the CNI plugins have veth names that
        cannot be traced back to them, so their allocations would be collected too.
    type: bool
    default: false
extends_documentation_fragment:
  - barepod.linux.roots.state_root
author:
  - barepod.linux developers (@barepod)
notes:
  - Acts on the network namespace it runs in (the node). Run it inside a node container, or under
    C(ip netns exec) for experiments; it never creates network namespaces.
  - Supports check mode and diff mode.
requirements:
  - Python 3.9 or newer on the managed node (older ones are refused).
  - pyroute2
  - iptables (iptables-save and iptables-restore) when O(ip_masq=true)
'''

EXAMPLES = r'''
- name: A node without pods yet - the bridge with the gateway of its pod CIDR, and ip_forward
  barepod.linux.veth_net:
    subnet: 10.244.1.0/24

- name: Attach the pod to cni0 with an address from 10.244.0.0/24
  barepod.linux.veth_net:
    pod_uid: 6f1c3a52-9a43-4f0e-8d2b-0b7cf3b0f2a1
    namespace: default
    name: nginx
    subnet: 10.244.0.0/24
  register: net

- name: Show the pod address
  ansible.builtin.debug:
    msg: "{{ net.ip }} via {{ net.gateway }} on {{ net.host_ifname }}"

- name: Detach it again (safe to repeat, also when the netns is gone)
  barepod.linux.veth_net:
    pod_uid: 6f1c3a52-9a43-4f0e-8d2b-0b7cf3b0f2a1
    namespace: default
    name: nginx
    state: absent
'''

RETURN = r'''
ip:
  description: The pod's address.
  returned: state=present
  type: str
  sample: 10.244.0.2
cidr:
  description: The pod's address with the prefix length.
  returned: state=present
  type: str
  sample: 10.244.0.2/24
gateway:
  description: The gateway (bridge) address.
  returned: state=present
  type: str
  sample: 10.244.0.1
subnet:
  description: The pod CIDR.
  returned: state=present
  type: str
  sample: 10.244.0.0/24
mac:
  description: MAC address of the pod's interface (null in check mode before it exists).
  returned: state=present
  type: str
  sample: 0a:58:0a:f4:00:02
host_ifname:
  description: Name of the host-side veth.
  returned: always
  type: str
  sample: veth3f2a9c0d1b7
ifname:
  description: Interface name inside the pod.
  returned: state=present
  type: str
  sample: eth0
bridge:
  description: The bridge.
  returned: state=present
  type: str
  sample: cni0
netns:
  description: Path of the pod's network namespace.
  returned: always
  type: str
  sample: /run/netns/barepod-6f1c3a52
network:
  description: The network name (IPAM directory).
  returned: state=present
  type: str
  sample: barepod
chain:
  description: The nat chain holding the pod's masquerade rules (null when O(ip_masq=false)).
  returned: state=present
  type: str
  sample: CNI-3b9cba8d2e5a1c0f7e6d4b21
released:
  description: Addresses released by O(state=absent).
  returned: state=absent
  type: list
  elements: str
collected:
  description: Addresses released by O(gc).
  returned: when gc=true
  type: list
  elements: str
collected_chains:
  description: Masquerade chains removed by O(gc).
  returned: when gc=true
  type: list
  elements: str
actions:
  description: What was (or in check mode would be) done.
  returned: always
  type: list
  elements: dict
'''

from ansible_collections.barepod.linux.plugins.module_utils import _netlink, _specs
from ansible_collections.barepod.linux.plugins.module_utils._module import run_module
from ansible_collections.barepod.linux.plugins.module_utils._veth import VethNet


def main():
    run_module('veth_net', _specs.veth_net(), VethNet, requires=_netlink.REQUIRES)


if __name__ == '__main__':
    main()
