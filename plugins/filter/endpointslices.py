# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The endpointslice controller's job as a filter: Services + pods -> EndpointSlices.

Follows kube-controller-manager's endpointslice controller (k8s.io/endpointslice: reconciler.go,
utils.go): the pods a Service's selector matches in its namespace, minus terminal pods and pods
without an IP, become endpoints grouped by their resolved port mapping, one set of slices per
address family, at most max_endpoints per slice, with a placeholder slice (no endpoints, no
ports) when nothing matches. Only the random 5-character name suffix of generateName is replaced
by a deterministic one, so the same inputs give the same objects on every run and every node.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
name: endpointslices
short_description: EndpointSlices for Services, from the pods they select, as the endpointslice controller makes them
version_added: 0.1.0
description:
  - Given v1 C(Service) objects and pods, returns the C(discovery.k8s.io/v1) C(EndpointSlice) objects that
    kube-controller-manager's endpointslice controller would create for them, ready for
    M(barepod.linux.kube_svc_rules).
  - Pods are those a Service's C(spec.selector) matches (every key equal) in the Service's namespace. Pods in
    phase C(Succeeded) or C(Failed) and pods without an IP are left out. Each endpoint has C(addresses) (the
    pod's IPs of the slice's family), C(conditions) (C(serving) is the pod's C(Ready) condition, C(terminating)
    is C(metadata.deletionTimestamp) being set, C(ready) is serving and not terminating, or always true with
    C(publishNotReadyAddresses)), C(nodeName), C(targetRef) (the Pod) and C(hostname) when the pod's
    C(spec.hostname) is set and its C(spec.subdomain) is the Service's name. No C(zone) (nodes carry no zone
    labels here).
  - Ports come from the Service's ports - C(name), C(protocol) (default TCP), C(appProtocol) - with the port
    number resolved per pod from C(targetPort) (default C(port)); a named C(targetPort) is looked up in the pod's
    container ports (and restartable init containers) with the same name and protocol; a pod without that port
    gets the endpoint without that port, as FindPort does. Pods whose resolved ports differ go to different
    slices.
  - One set of slices per address family of the Service (C(spec.ipFamilies), else the family of
    C(spec.clusterIP)); a family without endpoints gets one placeholder slice with no endpoints and no ports.
    At most O(max_endpoints) endpoints per slice.
  - Slice metadata - C(namespace) of the Service, C(generateName) C(<service>-), C(name) C(<service>-<5
    characters>) where the suffix is a hash of the namespace, Service, family, port mapping and slice index
    instead of random (same input, same names); C(labels) are the Service's labels plus
    C(kubernetes.io/service-name), C(endpointslice.kubernetes.io/managed-by) and, for headless Services,
    C(service.kubernetes.io/headless); C(ownerReferences) to the Service (with its C(uid) when it has one).
  - Services without a selector (or with an empty one) and C(ExternalName) Services get no slices (their
    EndpointSlices are written by hand; pass them to kube_svc_rules yourself).
  - Objects of other kinds in the input (EndpointSlices, Pods, ...) are ignored; C(List) objects are expanded.
  - There is no API server to allocate cluster IPs, so a Service without C(spec.clusterIP) (and not
    C(ExternalName)) is an error naming the Service; headless Services (C(clusterIP=None)) are fine.
author:
  - barepod.linux developers (@barepod)
options:
  _input:
    description: Service objects (a list, a single Service, or C(List) objects; other kinds are ignored).
    type: raw
    required: true
  pods:
    description:
      - The pods, each either a v1 Pod object (C(metadata), C(spec), C(status)) or an entry of the C(pods) list
        M(barepod.linux.pod_status) returns (C(namespace), C(name), C(uid), C(labels), C(node), C(spec),
        C(status)). Nested lists are flattened, V(None) items skipped, and a pod_status result (a dict with
        C(pods)) is expanded, so the results of every node can be passed directly.
    type: list
    elements: raw
    required: true
  max_endpoints:
    description: Maximum endpoints per slice (kube-controller-manager C(--max-endpoints-per-slice)).
    type: int
    default: 100
  managed_by:
    description: Value of the C(endpointslice.kubernetes.io/managed-by) label.
    type: str
    default: endpointslice-controller.k8s.io
'''

EXAMPLES = r'''
- name: Pods of this node
  barepod.linux.pod_status:
    node: "{{ inventory_hostname }}"
  register: node_pods

- name: The EndpointSlices for the Services, from the pods of every node of the play
  ansible.builtin.set_fact:
    slices: >-
      {{ services | barepod.linux.endpointslices(ansible_play_hosts
         | map('extract', hostvars, 'node_pods') | list) }}

- name: Apply them with kube-proxy's rules
  barepod.linux.kube_svc_rules:
    objects: "{{ services + slices }}"
'''

RETURN = r'''
_value:
  description: The EndpointSlice objects (C(apiVersion) C(discovery.k8s.io/v1)), in the order of the Services.
  type: list
  elements: dict
  sample:
    - apiVersion: discovery.k8s.io/v1
      kind: EndpointSlice
      metadata:
        name: kube-dns-7xk2b
        generateName: kube-dns-
        namespace: default
        labels:
          kubernetes.io/service-name: kube-dns
          endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
        ownerReferences:
          - {apiVersion: v1, kind: Service, name: kube-dns, controller: true, blockOwnerDeletion: true}
      addressType: IPv4
      endpoints:
        - addresses: [10.244.0.2]
          conditions: {ready: true, serving: true, terminating: false}
          nodeName: node-a
          targetRef: {kind: Pod, namespace: default, name: core-k8s, uid: 5f0c...}
      ports:
        - {name: dns-tcp, port: 53, protocol: TCP}
'''

import hashlib
import ipaddress

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # importable without Ansible (unit tests of the logic)
    class AnsibleFilterError(Exception):
        pass

SERVICE_NAME_LABEL = 'kubernetes.io/service-name'
MANAGED_BY_LABEL = 'endpointslice.kubernetes.io/managed-by'
HEADLESS_LABEL = 'service.kubernetes.io/headless'
CONTROLLER_NAME = 'endpointslice-controller.k8s.io'
RESERVED_LABELS = (SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL)
MAX_ENDPOINTS = 100
# k8s.io/apimachinery/pkg/util/rand: the alphabet of generated name suffixes (no vowels, no 0/1/3)
ALPHANUMS = 'bcdfghjklmnpqrstvwxz2456789'
MAX_GENERATED_NAME_LENGTH = 63 - 5
PROTOCOLS = ('TCP', 'UDP', 'SCTP')
FAMILY_ADDRESS_TYPE = {'IPv4': 'IPv4', 'IPv6': 'IPv6'}


def _fail(field, msg):
    raise AnsibleFilterError('%s: %s' % (field, msg))


def _objects(value, field):
    """Flatten lists and List objects; drop None."""
    out = []
    stack = [(value, field)]
    while stack:
        v, f = stack.pop(0)
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            stack[0:0] = [(x, '%s[%d]' % (f, i)) for i, x in enumerate(v)]
        elif isinstance(v, dict):
            kind = v.get('kind')
            if kind == 'List' or (isinstance(kind, str) and kind.endswith('List') and 'items' in v):
                stack[0:0] = [(x, '%s.items[%d]' % (f, i)) for i, x in enumerate(v.get('items') or [])]
            else:
                out.append((v, f))
        else:
            _fail(f, 'must be a Kubernetes object (a mapping), got %s' % type(v).__name__)
    return out


# ---------------------------------------------------------------- pods

class _Pod(object):
    __slots__ = ('namespace', 'name', 'uid', 'labels', 'spec', 'status', 'node_name', 'deleting', 'field', 'ips')


def _normalise_pod(p, field):
    pod = _Pod()
    pod.field = field
    if 'metadata' in p or p.get('kind') == 'Pod':
        md = p.get('metadata') or {}  # the identity fields of an API Pod
        if not isinstance(md, dict):
            _fail(field + '.metadata', 'must be a mapping')
        node = None
    else:  # barepod.linux.pod_status view: the identity fields at the top
        md = p
        node = p.get('node')
    pod.namespace = md.get('namespace') or 'default'
    pod.name = md.get('name')
    pod.uid = md.get('uid')
    pod.labels = md.get('labels') or {}
    pod.deleting = md.get('deletionTimestamp') is not None
    pod.spec = p.get('spec') or {}
    pod.status = p.get('status') or {}
    if not isinstance(pod.name, str) or not pod.name:
        _fail(field + '.name', 'a pod needs a name, got %r' % (pod.name,))
    if not isinstance(pod.namespace, str):
        _fail(field + '.namespace', 'must be a string, got %r' % (pod.namespace,))
    for attr in ('labels', 'spec', 'status'):
        if not isinstance(getattr(pod, attr), dict):
            _fail('%s.%s' % (field, attr), 'must be a mapping')
    pod.node_name = node or pod.spec.get('nodeName')
    _check_labels('%s.labels' % field, pod.labels)
    return pod


def _check_labels(field, labels):
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str):
            _fail('%s.%s' % (field, k), 'label keys and values are strings (quote them in YAML), got %r' % (v,))


def _pods(value):
    out = []
    for p, f in _objects(value, 'pods'):
        if 'pods' in p and 'name' not in p and 'metadata' not in p:  # a pod_status result
            for i, x in enumerate(p.get('pods') or []):
                if x is not None:
                    out.append(_normalise_pod(x, '%s.pods[%d]' % (f, i)))
            continue
        if p.get('kind') not in (None, 'Pod'):
            continue
        out.append(_normalise_pod(p, f))
    return out


def _pod_ips(pod):
    pod_ips = pod.status.get('podIPs') or []
    if not isinstance(pod_ips, list):
        _fail(pod.field + '.status.podIPs', 'must be a list')
    ips = [x.get('ip') if isinstance(x, dict) else x for x in pod_ips]
    if not ips and pod.status.get('podIP'):
        ips = [pod.status['podIP']]
    out = []
    for ip in ips:
        try:
            out.append(ipaddress.ip_address(str(ip).strip()))
        except ValueError:
            _fail(pod.field + '.status.podIPs', '%r is not an IP address' % (ip,))
    return out


def _pod_ready(pod):
    """endpointutil.IsPodReady: the pod's Ready condition is True."""
    conds = pod.status.get('conditions') or []
    if not isinstance(conds, list):
        _fail(pod.field + '.status.conditions', 'must be a list')
    for c in conds:
        if isinstance(c, dict) and c.get('type') == 'Ready':
            return c.get('status') == 'True'
    return False


def _should_be_endpoint(pod):
    """ShouldPodBeInEndpoints (terminating pods included, as the slice controller does)."""
    pod.ips = _pod_ips(pod)
    if pod.status.get('phase') in ('Succeeded', 'Failed'):
        return False
    return bool(pod.ips)


# ---------------------------------------------------------------- services

def _int_port(field, value):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        _fail(field, 'must be a port number 1-65535, got %r' % (value,))
    return value


def _service_ports(svc, field):
    ports = svc['spec'].get('ports') or []
    if not isinstance(ports, list):
        _fail(field + '.spec.ports', 'must be a list')
    out = []
    for i, sp in enumerate(ports):
        pf = '%s.spec.ports[%d]' % (field, i)
        if not isinstance(sp, dict):
            _fail(pf, 'must be a mapping')
        port = sp.get('port')
        if isinstance(port, str) and port.isdigit() and port.isascii():
            port = int(port)
        port = _int_port(pf + '.port', port)
        proto = sp.get('protocol') or 'TCP'
        if proto not in PROTOCOLS:
            _fail(pf + '.protocol', 'must be one of %s, got %r' % (', '.join(PROTOCOLS), proto))
        target = sp.get('targetPort')
        if target is None or target == 0 or target == '':
            target = port
        if isinstance(target, str) and target.isdigit() and target.isascii():
            target = int(target)  # a port name has at least one letter, so this is a number
        if isinstance(target, int) and not isinstance(target, bool):
            _int_port(pf + '.targetPort', target)
        elif not isinstance(target, str):
            _fail(pf + '.targetPort', 'must be a port number or a port name, got %r' % (target,))
        out.append(dict(name=str(sp.get('name') or ''), protocol=proto, target=target,
                        appProtocol=sp.get('appProtocol')))
    return out


def _find_port(pod, sp):
    """FindPort: the container port a service port targets on this pod, or None."""
    target = sp['target']
    if not isinstance(target, str):
        return target
    containers = list(pod.spec.get('containers') or [])
    containers += [c for c in pod.spec.get('initContainers') or []
                   if isinstance(c, dict) and c.get('restartPolicy') == 'Always']
    for c in containers:
        if not isinstance(c, dict):
            continue
        for p in c.get('ports') or []:
            if (isinstance(p, dict) and p.get('name') == target
                    and (p.get('protocol') or 'TCP') == sp['protocol']):
                try:
                    return int(p.get('containerPort'))
                except (TypeError, ValueError):
                    return None
    return None


def _address_types(svc, field):
    spec = svc['spec']
    families = spec.get('ipFamilies') or []
    types = []
    for f in families:
        if f not in FAMILY_ADDRESS_TYPE:
            _fail(field + '.spec.ipFamilies', 'unknown IP family %r (IPv4 or IPv6)' % (f,))
        if FAMILY_ADDRESS_TYPE[f] not in types:
            types.append(FAMILY_ADDRESS_TYPE[f])
    if types:
        return types
    cip = spec.get('clusterIP')
    if cip and cip != 'None':
        return ['IPv6' if ipaddress.ip_address(cip).version == 6 else 'IPv4']
    return ['IPv4', 'IPv6']  # headless without ipFamilies: both, as the controller assumes


def _check_service(svc, field):
    md = svc.get('metadata') or {}
    if not isinstance(md, dict):
        _fail(field + '.metadata', 'must be a mapping')
    name = md.get('name')
    if not isinstance(name, str) or not name:
        _fail(field + '.metadata.name', 'a Service needs a name, got %r' % (name,))
    if md.get('namespace') is not None and not isinstance(md['namespace'], str):
        _fail(field + '.metadata.namespace', 'must be a string, got %r' % (md['namespace'],))
    if md.get('labels') is not None and not isinstance(md['labels'], dict):
        _fail(field + '.metadata.labels', 'must be a mapping')
    spec = svc.get('spec')
    if not isinstance(spec, dict):
        _fail(field + '.spec', 'Service %s needs a spec' % name)
    sel = spec.get('selector')
    if sel is not None and not isinstance(sel, dict):
        _fail(field + '.spec.selector', 'must be a mapping of labels, got %r' % (sel,))
    _check_labels(field + '.spec.selector', sel or {})
    if spec.get('type') == 'ExternalName':
        return
    cip = spec.get('clusterIP')
    if cip in (None, ''):
        _fail(field + '.spec.clusterIP',
              'Service %s/%s has no clusterIP: there is no API server to allocate one, so set '
              'spec.clusterIP (an address of your service CIDR, e.g. 10.96.0.10) or None for a headless '
              'Service' % (md.get('namespace') or 'default', name))
    if cip != 'None':
        try:
            ipaddress.ip_address(str(cip))
        except ValueError:
            _fail(field + '.spec.clusterIP', '%r is not an IP address' % (cip,))


# ---------------------------------------------------------------- slices

def _suffix(*parts):
    digest = hashlib.sha256('\x00'.join(parts).encode('utf-8')).digest()
    return ''.join(ALPHANUMS[b % len(ALPHANUMS)] for b in digest[:5])


def _prefix(service_name):
    """getEndpointSlicePrefix + the API server's generateName truncation."""
    prefix = service_name + '-'
    if len(prefix) > 253:
        prefix = service_name
    return prefix[:MAX_GENERATED_NAME_LENGTH]


def _labels(svc, headless, managed_by):
    labels = dict((k, v) for k, v in ((svc.get('metadata') or {}).get('labels') or {}).items()
                  if k not in RESERVED_LABELS)
    if headless:
        labels[HEADLESS_LABEL] = ''
    labels[SERVICE_NAME_LABEL] = svc['metadata']['name']
    labels[MANAGED_BY_LABEL] = managed_by
    return labels


def _slice(svc, namespace, address_type, ports, endpoints, key, index, managed_by):
    md = svc['metadata']
    name = md['name']
    prefix = _prefix(name)
    owner = dict(apiVersion='v1', kind='Service', name=name)
    if md.get('uid'):
        owner['uid'] = md['uid']
    owner.update(controller=True, blockOwnerDeletion=True)
    headless = svc['spec'].get('clusterIP') == 'None'
    return dict(
        apiVersion='discovery.k8s.io/v1', kind='EndpointSlice',
        metadata=dict(name=prefix + _suffix(namespace, name, address_type, key, str(index)),
                      generateName=prefix, namespace=namespace,
                      labels=_labels(svc, headless, managed_by), ownerReferences=[owner]),
        addressType=address_type, endpoints=endpoints, ports=ports)


def _ip_sort_key(ep):
    ip = ipaddress.ip_address(ep['addresses'][0])
    return (ip.version, int(ip), ep['targetRef']['namespace'], ep['targetRef']['name'])


def _endpoint(pod, svc, ips):
    serving = _pod_ready(pod)
    terminating = pod.deleting
    ready = bool(svc['spec'].get('publishNotReadyAddresses')) or (serving and not terminating)
    ep = dict(addresses=[str(ip) for ip in ips],
              conditions=dict(ready=ready, serving=serving, terminating=terminating))
    if pod.node_name:
        ep['nodeName'] = pod.node_name
    ref = dict(kind='Pod', namespace=pod.namespace, name=pod.name)
    if pod.uid:
        ref['uid'] = pod.uid
    ep['targetRef'] = ref
    hostname, subdomain = pod.spec.get('hostname'), pod.spec.get('subdomain')
    if hostname and subdomain == svc['metadata']['name'] and pod.namespace == (
            svc['metadata'].get('namespace') or 'default'):
        ep['hostname'] = hostname
    return ep


def endpointslices(services, pods, max_endpoints=MAX_ENDPOINTS, managed_by=CONTROLLER_NAME):
    """Services (+ other objects, ignored) and pods -> [EndpointSlice] as the controller makes them."""
    try:
        max_endpoints = int(max_endpoints)
    except (TypeError, ValueError):
        _fail('max_endpoints', 'must be a number, got %r' % (max_endpoints,))
    if not 1 <= max_endpoints <= 1000:
        _fail('max_endpoints', 'must be 1-1000 (an EndpointSlice holds at most 1000), got %r' % (max_endpoints,))
    svcs = []
    seen = {}
    for obj, field in _objects(services, 'services'):
        if obj.get('kind', 'Service') != 'Service' or ('apiVersion' in obj and obj['apiVersion'] != 'v1'):
            continue
        _check_service(obj, field)
        md = obj['metadata']
        key = '%s/%s' % (md.get('namespace') or 'default', md['name'])
        if key in seen:
            _fail(field + '.metadata.name', 'Service %s is given twice (also as %s)' % (key, seen[key]))
        seen[key] = field
        svcs.append((obj, field))
    # pods that can be endpoints at all, indexed by (namespace, label key, value) for selector lookups
    index = {}
    for pod in _pods(pods):
        if not _should_be_endpoint(pod):
            continue
        for k, v in pod.labels.items():
            index.setdefault((pod.namespace, k, v), []).append(pod)

    out = []
    for svc, field in svcs:
        spec = svc['spec']
        namespace = svc['metadata'].get('namespace') or 'default'
        selector = spec.get('selector') or {}
        if not selector or spec.get('type') == 'ExternalName':
            continue
        ports = _service_ports(svc, field)
        types = _address_types(svc, field)
        # desired endpoints by address type, then by port mapping (reconcileByAddressType)
        by_type = dict((t, {}) for t in types)
        candidates = min((index.get((namespace, k, v), []) for k, v in selector.items()), key=len)
        for pod in candidates:
            if any(pod.labels.get(k) != v for k, v in selector.items()):
                continue
            ep_ports = []
            if ports or spec.get('clusterIP') != 'None':
                for sp in ports:
                    num = _find_port(pod, sp)
                    if num is None:
                        continue
                    p = dict(name=sp['name'], port=num, protocol=sp['protocol'])
                    if sp['appProtocol']:
                        p['appProtocol'] = sp['appProtocol']
                    ep_ports.append(p)
            pkey = '|'.join('%s/%s/%d/%s' % (p['name'], p['protocol'], p['port'], p.get('appProtocol') or '')
                            for p in ep_ports)
            ips = pod.ips
            for t in types:
                fam = 6 if t == 'IPv6' else 4
                addrs = [ip for ip in ips if ip.version == fam]
                if not addrs:
                    continue
                group = by_type[t].setdefault(pkey, (ep_ports, []))
                group[1].append(_endpoint(pod, svc, addrs))
        for t in types:
            groups = by_type[t]
            if not groups:
                out.append(_slice(svc, namespace, t, [], [], '', 0, managed_by))
                continue
            for pkey in sorted(groups):
                ep_ports, eps = groups[pkey]
                eps.sort(key=_ip_sort_key)
                for i in range(0, len(eps), max_endpoints):
                    out.append(_slice(svc, namespace, t, [dict(p) for p in ep_ports], eps[i:i + max_endpoints],
                                      pkey, i // max_endpoints, managed_by))
    return out


class FilterModule(object):
    def filters(self):
        return dict(endpointslices=endpointslices)
