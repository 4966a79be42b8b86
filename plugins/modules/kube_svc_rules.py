#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: kube_svc_rules
short_description: Kubernetes Services rendered into kube-proxy's iptables rules, applied atomically and incrementally
version_added: 0.1.0
description:
  - Takes real Kubernetes objects, v1 C(Service) and C(discovery.k8s.io/v1) C(EndpointSlice) (inline in
    O(objects) or in YAML files with one or many documents in O(src)), plus the node's kube-proxy settings,
    and writes the rules kube-proxy's iptables mode writes for them, chain names, rule order and comments
    included - C(KUBE-SERVICES), C(KUBE-SVC-*), C(KUBE-SVL-*), C(KUBE-EXT-*), C(KUBE-FW-*), C(KUBE-SEP-*),
    C(KUBE-NODEPORTS), C(KUBE-MARK-MASQ), C(KUBE-POSTROUTING) in the nat table and C(KUBE-SERVICES),
    C(KUBE-EXTERNAL-SERVICES), C(KUBE-NODEPORTS), C(KUBE-FORWARD), C(KUBE-PROXY-FIREWALL), C(KUBE-FIREWALL)
    in the filter table, with the jump rules from the built-in chains.
  - Chain names use kube-proxy's hash (sha256 of service port name + protocol [+ endpoint], base32,
    16 characters). Endpoints are chosen as kube-proxy chooses them (ready; serving+terminating as a
    fallback; Local/Cluster internal and external traffic policy), random load balancing with the
    statistic match (probability 1/(n-i), none on the last), ClientIP affinity with the recent match,
    REJECT in the filter table for Services without endpoints. TCP, UDP and SCTP; many ports per Service.
  - Apply is kube-proxy's partial sync - one C(iptables-restore --noflush) batch per table in one call,
    holding only the chains whose content differs from C(iptables-save); chains of Services that
    disappeared are flushed and deleted in the same batch; chains the module does not own are never
    touched; when nothing differs nothing is written and no C(iptables-restore) runs.
  - A first sync on iptables-legacy (the nat table holds none of the module's chains) streams its batch,
    C(iptables-restore) starts once the input is valid and parses the nat chains while they are rendered
    (nat table first, then filter). Nothing is committed before the nat table's C(COMMIT).
  - The backend (iptables-nft or iptables-legacy) is detected like kube-proxy's iptables-wrapper does
    (kubelet's hint chains first, then the backend holding more rules). Legacy tables are read only when
    C(/proc/net/ip_tables_names) lists some, and never one by one, so the detection never creates
    iptables-legacy tables in a namespace that had none.
  - O(apply=false) only renders (no root, no iptables), returning the C(iptables-restore) input kube-proxy
    would write for the objects.
options:
  objects:
    description:
      - Service and EndpointSlice objects (dicts as the API returns them; C(List) objects are expanded).
      - Services of type ExternalName and headless Services (C(clusterIP=None)) are skipped, as kube-proxy
        does. A Service without C(spec.clusterIP) is an error.
      - v1 Endpoints objects are ignored (kube-proxy reads EndpointSlices).
      - Service names, namespaces and port names must be DNS-1123 labels, as the API server requires
        (they end up in rule comments).
    type: list
    elements: dict
    default: []
  src:
    description: YAML files holding Services and EndpointSlices (one or many documents each), added to O(objects).
    type: list
    elements: path
    default: []
  state:
    description:
      - C(present) makes the rules match the objects.
      - C(absent) removes every chain the module owns (for its O(chain_prefix)) and the jumps to them.
        With the default prefix C(KUBE-FIREWALL) and C(KUBE-MARK-MASQ) are shared with kubelet - where they
        existed before the module's first sync they are left in place, as kube-proxy's own cleanup does;
        where the module created them (recorded in the sync record and in the canary chain's token)
        they are removed too, so a host without kubelet is left with nothing.
    type: str
    choices: [present, absent]
    default: present
  chain_prefix:
    description:
      - Prefix of every chain name. C(KUBE) matches kube-proxy exactly. Another prefix (for example C(BPOD))
        lets the rules live beside a running kube-proxy; neither then touches the other's chains or jumps.
      - 1 to 7 upper-case letters or digits.
    type: str
    default: KUBE
  node_name:
    description: This node's name; endpoints whose C(nodeName) equals it are local (Local traffic policy).
    type: str
  node_ip:
    description: This node's IP, used for C(loadBalancerSourceRanges) that include the node.
    type: str
  cluster_cidr:
    description:
      - The pod CIDR of the cluster (kube-proxy's C(--cluster-cidr) local traffic detector). Traffic to a
        cluster IP from outside it is masqueraded. Without it no such rule is written (as kube-proxy).
    type: str
  masquerade_bit:
    description: Bit of the packet mark used for SNAT (kube-proxy C(--iptables-masquerade-bit)), 14 gives 0x4000.
    type: int
    default: 14
  masquerade_all:
    description: Masquerade all traffic to cluster IPs (kube-proxy C(--masquerade-all)).
    type: bool
    default: false
  nodeport_addresses:
    description:
      - CIDRs of the node addresses NodePorts answer on (kube-proxy C(--nodeport-addresses)); empty means all
        local addresses.
    type: list
    elements: str
    default: []
  nodeport_ips:
    description:
      - The node's addresses matched against O(nodeport_addresses). Read from the (network namespace of the)
        host when not given and O(apply=true).
    type: list
    elements: str
  localhost_nodeports:
    description:
      - NodePorts on 127.0.0.0/8 (kube-proxy C(--iptables-localhost-nodeports), default on), with the
        C(KUBE-FIREWALL) rule that blocks martian localnet traffic. The module does not set the
        C(route_localnet) sysctl that kube-proxy sets for this.
    type: bool
    default: true
  random_fully:
    description: Add C(--random-fully) to the MASQUERADE rule (kube-proxy does when iptables supports it).
    type: bool
    default: true
  conntrack_tcp_be_liberal:
    description:
      - When true the C(KUBE-FORWARD) rule dropping INVALID packets is left out (as kube-proxy does when
        C(net.netfilter.nf_conntrack_tcp_be_liberal) is set). Default - read that sysctl.
    type: bool
  nfacct:
    description:
      - Add kube-proxy's nfacct counter matches (C(ct_state_invalid_dropped_pkts),
        C(localhost_nps_accepted_pkts)). The counters must already exist in the kernel.
    type: bool
    default: false
  apply:
    description: When false only render and return the payload (no root needed, nothing read or written).
    type: bool
    default: true
  backend:
    description: C(auto) detects nft vs legacy like kube-proxy's iptables-wrapper; or force one.
    type: str
    choices: [auto, nft, legacy]
    default: auto
  iptables_save:
    description: The iptables-save binary to use (default C(iptables-<backend>-save)).
    type: path
  iptables_restore:
    description: The iptables-restore binary to use (default C(iptables-<backend>-restore)).
    type: path
  iptables:
    description: The iptables binary used to read the canary chain (default C(iptables-<backend>)).
    type: path
  return_payload:
    description: Return the full rendered payload in RV(payload) (large for thousands of Services).
    type: bool
    default: true
  resync:
    description:
      - How the module learns what is already in the kernel.
      - C(auto) - like kube-proxy, which keeps what it wrote in memory and trusts it while its canary
        chain survives, the module keeps a record of what it wrote (per network namespace, backend and
        prefix, in O(state_dir)) and trusts it while its canary chain C(<prefix>-PROXY-CANARY) in the mangle
        table still carries the record's token. A flushed or recreated ruleset (or no record) falls back to
        comparing with C(iptables-save). Fast at thousands of Services; edits made by hand to single rules
        in between are not noticed until the next full sync (see O(full_sync_period)), as with kube-proxy.
      - With O(return_payload=false) the record also says what each Service rendered to, so unchanged
        input renders nothing and Services changed alone are rendered (and their chains written) alone
        (see RV(render)).
      - C(always) - compare every chain with C(iptables-save) on every run (repairs any edit).
      - With --diff the comparison is always with C(iptables-save).
    type: str
    choices: [auto, always]
    default: auto
  full_sync_period:
    description:
      - With O(resync=auto), compare with C(iptables-save) again (and repair what differs) when the last
        such comparison is older than this many seconds, even while the canary survives - kube-proxy's
        C(FullSyncPeriod) (one hour). As kube-proxy does, not in large cluster mode (more than 1000
        endpoints), where C(iptables-save) is expensive; there only a lost canary or O(resync=always) does.
      - V(0) turns the periodic comparison off.
    type: int
    default: 3600
  state_dir:
    description: Where the sync records of O(resync=auto) are kept (removed again by O(state=absent)).
    type: path
    default: /run/barepod/kube_svc_rules
author:
  - barepod.linux developers (@barepod)
notes:
  - IPv4 only (the IPv4 proxier); IPv6 Services and endpoints are skipped. Topology hints are not used.
  - Addresses in Services and EndpointSlices are read as kube-proxy reads them (ParseIPSloppy) - IPv4 with leading
    zeros, which the API server once accepted, in decimal (C(172.30.0.041) is C(172.30.0.41)) - with a warning.
  - Of kube-proxy's canary chains only C(<prefix>-PROXY-CANARY) in the mangle table is created, holding one
    comment-only rule with the sync record's token (see O(resync)); C(KUBE-KUBELET-CANARY) is kubelet's.
  - With more than 1000 endpoints the comments of the per-endpoint rules are dropped, as kube-proxy's
    large-cluster mode does.
  - Supports check mode (reports the chains that would be added, changed and removed) and diff
    (rule-level, in iptables-save form).
  - At thousands of Services use O(src) (YAML or JSON files, read with libyaml and not parsed at all
    when unchanged) rather than O(objects) (Ansible copies and validates every inline object), and
    O(return_payload=false) - only then are unchanged input and Services changed alone handled
    from the sync record without rendering everything. More than 100 inline objects are not echoed back
    in C(invocation).
requirements:
  - Python 3.9 or newer on the managed node (older ones are refused).
  - iptables (nft and/or legacy) with iptables-save and iptables-restore, root, unless O(apply=false).
  - PyYAML for O(src).
'''

EXAMPLES = r'''
- name: Give the chapter's pod a kube-dns-like Service on port 53
  barepod.linux.kube_svc_rules:
    src: [examples/kube-dns-service.yaml]
    node_name: barepod-node
    cluster_cidr: 10.244.0.0/16

- name: Rules beside a real kube-proxy on a kind node, without touching its chains
  barepod.linux.kube_svc_rules:
    src: [/tmp/services.yaml]
    chain_prefix: BPOD

- name: Offline - what would kube-proxy write for these objects?
  barepod.linux.kube_svc_rules:
    src: [services.yaml]
    apply: false
  register: kp
  delegate_to: localhost

- name: Remove every rule and chain the module owns
  barepod.linux.kube_svc_rules:
    state: absent
'''

RETURN = r'''
payload:
  description: The iptables-restore input kube-proxy would write for the objects (chains grouped by table).
  returned: when return_payload
  type: str
restore_payload:
  description:
    - The partial batch actually given to iptables-restore (or that would be, in check mode).
    - Empty when nothing differs. A streamed first sync lists the nat table first.
  returned: when apply
  type: str
chains:
  description:
    - Chains added, changed and removed (as C(table/chain)) and jump rules added and removed.
    - With apply=false, the desired chains.
  returned: always
  type: dict
  sample:
    added: [nat/KUBE-SVC-XPGD46QRK7WJZT7O]
    changed: [nat/KUBE-SERVICES]
    removed: []
    jumps_added: []
    jumps_removed: []
backend:
  description: The iptables backend used (nft or legacy) and, in backend_reason, why.
  returned: when apply
  type: str
services:
  description: Number of service ports rendered.
  returned: always
  type: int
endpoints:
  description: Number of endpoints across all service ports.
  returned: always
  type: int
rules:
  description: Number of rules per table in the rendered rule set.
  returned: always
  type: dict
not_proxied:
  description:
    - Objects not proxied and why (headless, ExternalName, IPv6, v1 Endpoints).
    - Named C(skipped) before 0.1.0, a key Ansible reserves (the task showed as skipped).
  returned: always
  type: list
restores:
  description: Number of iptables-restore runs (0 or 1).
  returned: when apply
  type: int
sync:
  description: How the current state was learned, C(recorded) (trusted record, see O(resync)) or C(iptables-save).
  returned: when apply
  type: str
sync_reason:
  description:
    - Why the state was learned that way, for example C(record trusted (canary token matches)),
      C(no record), C(canary token differs from the record), C(periodic full sync (last one 3605 s ago)),
      C(resync=always) or C(--diff).
  returned: when apply
  type: str
render:
  description:
    - What was rendered - C(full), C(none) (input unchanged since the recorded sync), or
      C(partial (k of n Services)) (only the Services that changed, their chains alone planned and written).
    - The two fast forms need O(resync=auto) and O(return_payload=false).
  returned: when apply
  type: str
'''

import functools
import traceback

try:
    import yaml
    HAS_YAML = True
    YAML_IMPORT_ERROR = None
except ImportError:
    yaml = None
    HAS_YAML = False
    YAML_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.barepod.linux.plugins.module_utils import _specs
from ansible_collections.barepod.linux.plugins.module_utils._kpsync import SvcRules
from ansible_collections.barepod.linux.plugins.module_utils._module import run_module


ECHO_OBJECTS_MAX = 100


def _echo(params):
    """Ansible echoes every argument back (and deep-copies it twice on the way): at thousands of
    objects that is most of the module's run time, so they are counted instead."""
    objects = params['objects'] or []
    if len(objects) <= ECHO_OBJECTS_MAX:
        return None
    return dict(params, objects='(%d objects, not echoed)' % len(objects))


def main():
    run_module('kube_svc_rules', _specs.kube_svc_rules(), functools.partial(SvcRules, yaml_mod=yaml),
               requires=[('PyYAML', HAS_YAML, YAML_IMPORT_ERROR, lambda params: params['src'])], echo=_echo)


if __name__ == '__main__':
    main()
