# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kube-proxy's iptables mode, as a pure function of Services and EndpointSlices.

render(objects, settings) returns a Ruleset: per table ("filter", "nat") an ordered mapping
chain -> rules, plus the jump rules from the built-in chains. Every rule is held in two
spellings built from the same pieces in one pass:

- ``kp``: exactly what kube-proxy's syncProxyRules writes into its iptables-restore input
  (argument order, quoting, "%0.10f" probabilities, ``--or-mark``), used for the returned
  payload and compared verbatim with kube-proxy's own golden dumps (proxier_test.go);
- ``saved``: how iptables-save prints that rule back (``-d 10.0.0.1/32 -p tcp`` first,
  ``%.11f`` probabilities, ``--set-xmark``, the recent match's implied options ...), which
  is what the partial sync compares against, chain by chain, to decide what to rewrite.
  Both backends (iptables-nft and iptables-legacy 1.8.x) print the same text.

Behaviour follows kubernetes pkg/proxy/iptables/proxier.go (chain names from
sha256(servicePortName + protocol [+ endpoint]) in base32, first 16 characters), the
EndpointSliceCache (dedupe by ip:port, ready/serving/terminating conditions, endpoints sorted
by "ip:port") and pkg/proxy/topology.go CategorizeEndpoints (Cluster/Local traffic policy,
falling back to serving+terminating endpoints). IPv4 only; topology hints are not used.
"""

from __future__ import annotations

import gc
import hashlib
import ipaddress
import json
import marshal
import os
import re
import subprocess
import time
import uuid

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError, failpoint, makedirs
from ansible_collections.barepod.linux.plugins.module_utils._common import failpoint_armed
from ansible_collections.barepod.linux.plugins.module_utils._common import atomic_write
from ansible_collections.barepod.linux.plugins.module_utils._common import DNS1123_LABEL_RE

PROTOCOLS = ('TCP', 'UDP', 'SCTP')
_PROTOCOL_SET = frozenset(PROTOCOLS)
_LOWER = dict((p, p.lower()) for p in PROTOCOLS)
SERVICE_TYPES = ('ClusterIP', 'NodePort', 'LoadBalancer', 'ExternalName')
LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000
DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_AFFINITY_TIMEOUT = 86400
SERVICE_NAME_LABEL = 'kubernetes.io/service-name'
PREFIX_RE = re.compile(r'^[A-Z][A-Z0-9]{0,6}$')
NFACCT_CT_INVALID = 'ct_state_invalid_dropped_pkts'
NFACCT_LOCALHOST_NP = 'localhost_nps_accepted_pkts'
TABLES = ('filter', 'nat')
BUILTIN_CHAINS = {
    'filter': ('INPUT', 'FORWARD', 'OUTPUT'),
    'nat': ('PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING'),
}
SERVICE_CHAIN_KINDS = ('SVC', 'SVL', 'EXT', 'FW', 'SEP')


# --------------------------------------------------------------------------- naming

_B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'
_B32_PAIRS = [a + b for a in _B32 for b in _B32]  # 10 bits -> 2 characters


def _b32_16(digest):
    """base32(digest)[:16]: 16 characters are exactly the first 80 bits (10 bytes)."""
    n = int.from_bytes(digest[:10], 'big')
    p = _B32_PAIRS
    return (p[n >> 70] + p[(n >> 60) & 1023] + p[(n >> 50) & 1023] + p[(n >> 40) & 1023]
            + p[(n >> 30) & 1023] + p[(n >> 20) & 1023] + p[(n >> 10) & 1023] + p[n & 1023])


def port_proto_hash(service_port_name, protocol):
    return _b32_16(hashlib.sha256((service_port_name + protocol).encode('utf-8')).digest())


def endpoint_hash(service_port_name, protocol, endpoint):
    return _b32_16(hashlib.sha256((service_port_name + protocol + endpoint).encode('utf-8')).digest())


def service_port_name(namespace, name, port_name):
    """proxy.ServicePortName.String(): ns/name, plus :port when the port is named."""
    s = '%s/%s' % (namespace, name)
    return s + ':' + port_name if port_name else s


def compute_probability(n):
    return '%0.10f' % (1.0 / n)


def saved_probability(kp_probability):
    """libxt_statistic stores lround(p * 2^31) and prints it back with %.11f."""
    v = int(float(kp_probability) * 0x80000000 + 0.5)
    return '%.11f' % (v / float(0x80000000))


def chain_names(prefix):
    """The fixed chains of a ruleset with this prefix (KUBE matches kube-proxy)."""
    return dict(
        services=prefix + '-SERVICES',
        external_services=prefix + '-EXTERNAL-SERVICES',
        nodeports=prefix + '-NODEPORTS',
        postrouting=prefix + '-POSTROUTING',
        mark_masq=prefix + '-MARK-MASQ',
        forward=prefix + '-FORWARD',
        proxy_firewall=prefix + '-PROXY-FIREWALL',
        firewall=prefix + '-FIREWALL',
    )


def is_service_chain(prefix, chain):
    for kind in SERVICE_CHAIN_KINDS:
        if chain.startswith('%s-%s-' % (prefix, kind)):
            return True
    return False


def owned_chains(prefix):
    """table -> set of fixed chain names this ruleset owns (service chains go by prefix)."""
    c = chain_names(prefix)
    filt = {c['services'], c['external_services'], c['forward'], c['nodeports'],
            c['proxy_firewall'], c['firewall']}
    nat = {c['services'], c['nodeports'], c['postrouting'], c['mark_masq']}
    return {'filter': filt, 'nat': nat}


def owns_chain(prefix, table, chain):
    return chain in owned_chains(prefix)[table] or (table == 'nat' and is_service_chain(prefix, chain))


# --------------------------------------------------------------------------- quoting

def kp_comment(text):
    """kube-proxy wraps comments holding spaces in literal double quotes."""
    return '"%s"' % text if ' ' in text else text


def saved_comment(text):
    return '"%s"' % text


def split_rule(line):
    """Split an iptables-save rule into tokens, honouring double quotes."""
    out = []
    i, n = 0, len(line)
    while i < n:
        if line[i] == ' ':
            i += 1
            continue
        if line[i] == '"':
            j = i + 1
            buf = []
            while j < n and line[j] != '"':
                if line[j] == '\\' and j + 1 < n:
                    j += 1
                buf.append(line[j])
                j += 1
            out.append(''.join(buf))
            i = j + 1
        else:
            j = line.find(' ', i)
            if j < 0:
                j = n
            out.append(line[i:j])
            i = j
    return out


# --------------------------------------------------------------------------- input

def _err(msg, field, value=None):
    return BarepodError(msg, field=field, value=value)


_OCTET = r'(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
_IPV4_RE = re.compile(r'^%s\.%s\.%s\.%s$' % (_OCTET, _OCTET, _OCTET, _OCTET))


class _V4(str):
    """A dotted-quad IPv4 address that passed the fast check (behaves like the string)."""
    __slots__ = ()
    version = 4


def _ipv4(field, value):
    """An IP address: a _V4 string for IPv4 (fast path), an ipaddress object otherwise."""
    if isinstance(value, str) and _IPV4_RE.match(value):
        return _V4(value)
    if not isinstance(value, str) or not value:
        raise _err('must be an IP address, got %r' % (value,), field, value)
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        raise _err('%r is not a valid IP address' % (value,), field, value)
    return _V4(str(ip)) if ip.version == 4 else ip


def _cidr(field, value):
    if not isinstance(value, str):
        raise _err('must be a CIDR such as 10.0.0.0/8, got %r' % (value,), field, value)
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise _err('%r is not a valid CIDR' % (value,), field, value)


def _int(field, value, lo, hi, what='a number'):
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
            value = int(value.strip())
        else:
            raise _err('must be %s between %d and %d, got %r' % (what, lo, hi, value), field, value)
    if not lo <= value <= hi:
        raise _err('%d is out of range (%d-%d)' % (value, lo, hi), field, value)
    return value


def _str(field, value, default=None, required=False):
    if value is None:
        if required:
            raise _err('is required', field, value)
        return default
    if not isinstance(value, str):
        raise _err('must be a string, got %r' % (value,), field, value)
    return value


_LABEL_MATCH = DNS1123_LABEL_RE.match


def _label(field, value, what):
    """Names that end up in rule comments: DNS-1123 labels, as the API server validates them
    (a quote, space or newline would otherwise break out of the iptables-restore comment)."""
    if len(value) > 63 or not _LABEL_MATCH(value):
        raise _err('%r is not a valid %s (a DNS-1123 label: lower case letters, digits and "-", at '
                   'most 63 characters)' % (value, what), field, value)
    return value


def _list(field, value):
    if value is None:
        return []
    if not isinstance(value, list):
        raise _err('must be a list, got %r' % (value,), field, value)
    return value


def _map(field, value):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err('must be a mapping, got %r' % (value,), field, value)
    return value


def _protocol(field, value):
    if value is None:
        return 'TCP'
    if value not in PROTOCOLS:
        raise _err('unknown protocol %r (one of %s)' % (value, ', '.join(PROTOCOLS)), field, value)
    return value


def flatten_objects(objs, field='objects'):
    """Expand v1 List objects; reject anything that is not a mapping."""
    out = []
    for i, o in enumerate(objs or []):
        f = '%s[%d]' % (field, i)
        if o is None:
            continue
        if not isinstance(o, dict):
            raise _err('must be a Kubernetes object (a mapping), got %r' % (type(o).__name__,), f, o)
        if o.get('kind') == 'List' or (isinstance(o.get('kind'), str) and o['kind'].endswith('List')
                                       and isinstance(o.get('items'), list)):
            for j, item in enumerate(o.get('items') or []):
                out.append(('%s.items[%d]' % (f, j), item))
        else:
            out.append((f, o))
    return out


class ServicePort(object):
    """One port of one Service: kube-proxy's servicePortInfo."""

    __slots__ = ('namespace', 'name', 'port_name', 'name_string', 'protocol', 'proto', 'cluster_ip',
                 'port', 'node_port', 'external_ips', 'lb_vips', 'lb_source_ranges',
                 'affinity_timeout', 'health_check_node_port', 'internal_local', 'external_local',
                 'hash', 'field')

    def externally_accessible(self):
        return bool(self.node_port or self.lb_vips or self.external_ips)

    def uses_cluster_endpoints(self):
        return not self.internal_local or self.externally_accessible()

    def uses_local_endpoints(self):
        return self.internal_local or (self.external_local and self.externally_accessible())


class Endpoint(object):
    __slots__ = ('ip', 'port', 'local', 'ready', 'serving', 'terminating', 'string', 'chain_hash')


def parse_service(field, obj, skipped):
    meta = obj.get('metadata') or {}
    if not isinstance(meta, dict):
        raise _err('must be a mapping', field + '.metadata', meta)
    name = _str(field + '.metadata.name', meta.get('name'), required=True)
    if not name:
        raise _err('is required', field + '.metadata.name', name)
    namespace = _str(field + '.metadata.namespace', meta.get('namespace'), 'default') or 'default'
    _label(field + '.metadata.name', name, 'Service name')
    _label(field + '.metadata.namespace', namespace, 'namespace')
    spec = obj.get('spec')
    if not isinstance(spec, dict):
        raise _err('is required (a Service needs a spec)', field + '.spec', spec)
    svc_type = spec.get('type') or 'ClusterIP'
    if svc_type not in SERVICE_TYPES:
        raise _err('unknown Service type %r (one of %s)' % (svc_type, ', '.join(SERVICE_TYPES)),
                   field + '.spec.type', svc_type)
    key = '%s/%s' % (namespace, name)
    cluster_ip = spec.get('clusterIP')
    if svc_type == 'ExternalName':
        skipped.append(dict(service=key, reason='type ExternalName is not proxied'))
        return key, []
    if cluster_ip is None or cluster_ip == '':
        raise _err('Service %s has no clusterIP: kube-proxy only proxies Services with a cluster IP '
                   '(set it to the address the API server allocated, or "None" for a headless '
                   'Service)' % key, field + '.spec.clusterIP', cluster_ip)
    if cluster_ip == 'None':
        skipped.append(dict(service=key, reason='headless (clusterIP None)'))
        return key, []
    ip = _ipv4(field + '.spec.clusterIP', cluster_ip)
    if ip.version != 4:
        skipped.append(dict(service=key, reason='IPv6 cluster IP %s (this proxier is IPv4)' % ip))
        return key, []
    ports = spec.get('ports')
    if not isinstance(ports, list) or not ports:
        raise _err('Service %s needs at least one port' % key, field + '.spec.ports', ports)

    etp = spec.get('externalTrafficPolicy') or 'Cluster'
    itp = spec.get('internalTrafficPolicy') or 'Cluster'
    for f, v in (('externalTrafficPolicy', etp), ('internalTrafficPolicy', itp)):
        if v not in ('Cluster', 'Local'):
            raise _err('must be Cluster or Local, got %r' % (v,), field + '.spec.' + f, v)
    externally = svc_type in ('NodePort', 'LoadBalancer') or bool(spec.get('externalIPs'))
    external_local = externally and etp == 'Local'
    internal_local = itp == 'Local'

    affinity = spec.get('sessionAffinity') or 'None'
    if affinity not in ('None', 'ClientIP'):
        raise _err('must be None or ClientIP, got %r' % (affinity,), field + '.spec.sessionAffinity', affinity)
    timeout = 0
    if affinity == 'ClientIP':
        timeout = DEFAULT_AFFINITY_TIMEOUT
        cfg = _map(field + '.spec.sessionAffinityConfig.clientIP',
                   _map(field + '.spec.sessionAffinityConfig', spec.get('sessionAffinityConfig')).get('clientIP'))
        if cfg.get('timeoutSeconds') is not None:
            timeout = _int(field + '.spec.sessionAffinityConfig.clientIP.timeoutSeconds',
                           cfg['timeoutSeconds'], 1, MAX_AFFINITY_TIMEOUT, 'a number of seconds')

    external_ips = []
    for i, e in enumerate(_list(field + '.spec.externalIPs', spec.get('externalIPs'))):
        eip = _ipv4('%s.spec.externalIPs[%d]' % (field, i), e)
        if eip.version == 4:
            external_ips.append(str(eip))
    lb_vips = []
    if svc_type == 'LoadBalancer':
        ingress = _list(field + '.status.loadBalancer.ingress', _map(
            field + '.status.loadBalancer', _map(field + '.status', obj.get('status')).get('loadBalancer')).get('ingress'))
        for i, ing in enumerate(ingress):
            if not isinstance(ing, dict) or not ing.get('ip'):
                continue
            if ing.get('ipMode') == 'Proxy':
                continue
            vip = _ipv4('%s.status.loadBalancer.ingress[%d].ip' % (field, i), ing['ip'])
            if vip.version == 4:
                lb_vips.append(str(vip))
    source_ranges = []
    for i, r in enumerate(_list(field + '.spec.loadBalancerSourceRanges', spec.get('loadBalancerSourceRanges'))):
        net = _cidr('%s.spec.loadBalancerSourceRanges[%d]' % (field, i), r)
        if net.version == 4:
            source_ranges.append(net)
    hc_port = 0
    if svc_type == 'LoadBalancer' and etp == 'Local' and spec.get('healthCheckNodePort'):
        hc_port = _int(field + '.spec.healthCheckNodePort', spec['healthCheckNodePort'], 1, 65535, 'a port')

    out = []
    seen = set()
    cip = str(ip)
    for i, p in enumerate(ports):
        pf = '%s.spec.ports[%d]' % (field, i)
        if not isinstance(p, dict):
            raise _err('must be a mapping', pf, p)
        pname = p.get('name') or ''
        if not isinstance(pname, str):
            _str(pf + '.name', pname)
        if not pname and len(ports) > 1:
            raise _err('is required when a Service has more than one port', pf + '.name', pname)
        if pname:
            _label(pf + '.name', pname, 'port name')
        if pname in seen:
            raise _err('duplicate port name %r' % pname, pf + '.name', pname)
        seen.add(pname)
        sp = ServicePort()
        sp.field = pf
        sp.namespace, sp.name, sp.port_name = namespace, name, pname
        protocol = p.get('protocol') or 'TCP'
        sp.protocol = protocol if protocol in _PROTOCOL_SET else _protocol(pf + '.protocol', protocol)
        sp.proto = _LOWER[sp.protocol]
        port = p.get('port')
        sp.port = port if (port.__class__ is int and 0 < port < 65536) else _int(pf + '.port', port, 1, 65535, 'a port')
        np_ = p.get('nodePort')
        if not np_:
            sp.node_port = 0
        elif np_.__class__ is int and 0 < np_ < 65536:
            sp.node_port = np_
        else:
            sp.node_port = _int(pf + '.nodePort', np_, 1, 65535, 'a port')
        sp.cluster_ip = cip
        sp.name_string = service_port_name(namespace, name, pname)
        sp.external_ips = external_ips
        sp.lb_vips = lb_vips
        sp.lb_source_ranges = source_ranges
        sp.affinity_timeout = timeout
        sp.health_check_node_port = hc_port
        sp.internal_local = internal_local
        sp.external_local = external_local
        sp.hash = port_proto_hash(sp.name_string, sp.proto)
        out.append(sp)
    return key, out


def parse_slice(field, obj, node_name):
    """-> (service key, {(port name, protocol): [Endpoint]}) following EndpointSliceCache."""
    meta = obj.get('metadata') or {}
    namespace = _str(field + '.metadata.namespace', meta.get('namespace'), 'default') or 'default'
    labels = meta.get('labels') or {}
    svc = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
    if not svc:
        raise _err('an EndpointSlice must carry the label %s naming its Service' % SERVICE_NAME_LABEL,
                   field + '.metadata.labels', labels)
    key = '%s/%s' % (namespace, svc)
    address_type = obj.get('addressType') or 'IPv4'
    if address_type not in ('IPv4', 'IPv6', 'FQDN'):
        raise _err('unknown addressType %r' % (address_type,), field + '.addressType', address_type)
    result = {}
    if address_type != 'IPv4':
        return key, result
    endpoints = obj.get('endpoints') or []
    if not isinstance(endpoints, list):
        raise _err('must be a list', field + '.endpoints', endpoints)
    parsed = []
    match = _IPV4_RE.match
    for i, ep in enumerate(endpoints):
        if not isinstance(ep, dict):
            raise _err('must be a mapping', '%s.endpoints[%d]' % (field, i), ep)
        addrs = ep.get('addresses')
        if not addrs:
            continue
        a = addrs[0] if isinstance(addrs, list) else None
        if not (isinstance(a, str) and match(a)):
            a = _ipv4('%s.endpoints[%d].addresses[0]' % (field, i), a)
            if a.version != 4:
                continue
        cond = ep.get('conditions')
        if cond is not None and not isinstance(cond, dict):
            raise _err('must be a mapping', '%s.endpoints[%d].conditions' % (field, i), cond)
        if cond:
            r, sv = cond.get('ready'), cond.get('serving')
            ready = r is None or bool(r)
            serving = sv is None or bool(sv)
            terminating = bool(cond.get('terminating'))
        else:
            ready = serving = True
            terminating = False
        local = node_name is not None and ep.get('nodeName') == node_name
        parsed.append((str(a), local, ready, serving, terminating))
    for i, p in enumerate(_list(field + '.ports', obj.get('ports'))):
        pf = '%s.ports[%d]' % (field, i)
        if not isinstance(p, dict):
            raise _err('must be a mapping', pf, p)
        port = p.get('port')
        if not port:
            continue
        if not (port.__class__ is int and 0 < port < 65536):
            port = _int(pf + '.port', port, 1, 65535, 'a port')
        pname = p.get('name') or ''
        if not isinstance(pname, str):
            _str(pf + '.name', pname)
        proto = p.get('protocol') or 'TCP'
        if proto not in _PROTOCOL_SET:
            proto = _protocol(pf + '.protocol', proto)
        eps = result.setdefault((pname, proto), [])
        for ip, local, ready, serving, terminating in parsed:
            e = Endpoint()
            e.ip, e.port, e.local = ip, port, local
            e.ready, e.serving, e.terminating = ready, serving, terminating
            e.string = '%s:%d' % (ip, port)
            eps.append(e)
    return key, result


def load(objects, node_name=None):
    """objects -> (sorted [ServicePort], {svc port name string: [Endpoint]}, skipped)."""
    services = {}
    slices = []
    skipped = []
    for field, obj in flatten_objects(objects):
        kind = obj.get('kind')
        if kind == 'Service':
            key, ports = parse_service(field, obj, skipped)
            if key in services:
                raise _err('Service %s is given twice' % key, field, key)
            services[key] = ports
        elif kind == 'EndpointSlice':
            slices.append(parse_slice(field, obj, node_name) + (field,))
        elif kind in ('Endpoints',):
            skipped.append(dict(object=field, reason='v1 Endpoints are ignored; kube-proxy reads EndpointSlices'))
        else:
            raise _err('unsupported kind %r (expected Service or EndpointSlice)' % (kind,), field + '.kind', kind)
    # endpoints per (service, port name, protocol), deduplicated by ip:port (local wins)
    by_port = {}
    for key, ports, field in slices:
        if key not in services:
            raise _err('EndpointSlice names Service %s, which is not among the given Services' % key,
                       field + '.metadata.labels.' + SERVICE_NAME_LABEL, key)
        for (pname, proto), eps in ports.items():
            d = by_port.setdefault((key, pname, proto), {})
            for e in eps:
                if e.string not in d or e.local:
                    d[e.string] = e
    svc_ports = []
    endpoints = {}
    for key in services:
        for sp in services[key]:
            svc_ports.append(sp)
            d = by_port.get(('%s/%s' % (sp.namespace, sp.name), sp.port_name, sp.protocol), {})
            eps = sorted(d.values(), key=lambda e: e.string)
            for e in eps:
                e.chain_hash = endpoint_hash(sp.name_string, sp.proto, e.string)
            endpoints[(sp.name_string, sp.protocol)] = eps
    svc_ports.sort(key=lambda s: (s.name_string, s.protocol))
    return svc_ports, endpoints, skipped


def categorize_endpoints(endpoints, sp):
    """pkg/proxy/topology.go CategorizeEndpoints (without topology hints)."""
    cluster, local, reachable, has_any = [], [], [], False
    if sp.uses_cluster_endpoints():
        cluster = [e for e in endpoints if e.ready]
        if not cluster:
            cluster = [e for e in endpoints if e.serving and e.terminating]
        if cluster:
            has_any = True
    if not sp.uses_local_endpoints():
        return cluster, local, cluster, has_any
    has_local_ready = has_local_st = False
    for e in endpoints:
        if e.ready:
            has_any = True
            if e.local:
                has_local_ready = True
        elif e.serving and e.terminating:
            has_any = True
            if e.local:
                has_local_st = True
    use_st = False
    if has_local_ready:
        local = [e for e in endpoints if e.local and e.ready]
    elif has_local_st:
        use_st = True
        local = [e for e in endpoints if e.local and e.serving and e.terminating]
    if not sp.uses_cluster_endpoints():
        return cluster, local, local, has_any
    if not use_st:
        return cluster, local, cluster, has_any
    merged = {}
    for e in cluster + local:
        merged[e.string] = e
    reachable = [merged[k] for k in sorted(merged)]
    return cluster, local, reachable, has_any


# --------------------------------------------------------------------------- settings

class Settings(object):
    """The node's kube-proxy configuration (flags of the iptables proxier)."""

    def __init__(self, node_name=None, node_ip=None, cluster_cidr=None, masquerade_bit=14,
                 masquerade_all=False, nodeport_addresses=None, nodeport_ips=None,
                 localhost_nodeports=True, random_fully=True, conntrack_tcp_be_liberal=False,
                 nfacct=False, chain_prefix='KUBE'):
        if not isinstance(chain_prefix, str) or not PREFIX_RE.match(chain_prefix):
            raise _err('must be 1-7 upper-case letters or digits starting with a letter (chain '
                       'names are limited to 28 characters), got %r' % (chain_prefix,),
                       'chain_prefix', chain_prefix)
        self.chain_prefix = chain_prefix
        self.node_name = node_name or None
        self.node_ip = ipaddress.ip_address(str(_ipv4('node_ip', node_ip))) if node_ip else None
        self.cluster_cidr = None
        if cluster_cidr:
            self.cluster_cidr = _cidr('cluster_cidr', cluster_cidr)
            if self.cluster_cidr.version != 4:
                raise _err('must be an IPv4 CIDR', 'cluster_cidr', cluster_cidr)
        self.masquerade_bit = _int('masquerade_bit', masquerade_bit, 0, 31, 'a bit number')
        self.mark = '0x%08x' % (1 << self.masquerade_bit)
        self.mark_saved = '0x%x' % (1 << self.masquerade_bit)
        self.masquerade_all = bool(masquerade_all)
        self.nodeport_addresses = [_cidr('nodeport_addresses[%d]' % i, c)
                                   for i, c in enumerate(nodeport_addresses or [])]
        self.nodeport_addresses = [n for n in self.nodeport_addresses if n.version == 4]
        self.nodeport_ips = [ipaddress.ip_address(str(_ipv4('nodeport_ips[%d]' % i, a)))
                             for i, a in enumerate(nodeport_ips or [])]
        loop = ipaddress.ip_address('127.0.0.1')
        contains_loopback = (not self.nodeport_addresses) or any(loop in n for n in self.nodeport_addresses)
        self.localhost_nodeports = bool(localhost_nodeports) and contains_loopback
        self.random_fully = bool(random_fully)
        self.conntrack_tcp_be_liberal = bool(conntrack_tcp_be_liberal)
        self.nfacct = bool(nfacct)

    def nodeport_match_all(self):
        return not self.nodeport_addresses

    def selected_nodeport_ips(self):
        out = []
        for ip in self.nodeport_ips:
            if ip.version == 4 and any(ip in n for n in self.nodeport_addresses):
                out.append(ip)
        return sorted(set(out))


# --------------------------------------------------------------------------- the ruleset

class Ruleset(object):
    """table -> {chain: [(kp, saved)]} in output order, plus jump rules from built-in chains."""

    def __init__(self, prefix, on_new=None):
        self.prefix = prefix
        self.chains = {'filter': {}, 'nat': {}}
        self.jumps = []  # (table, builtin chain, kp args, saved args)
        self.services = 0
        self.endpoints = 0
        self.large_cluster_mode = False
        self.on_new = on_new   # on_new(table, chain) as each chain comes into being

    def chain(self, table, name):
        c = self.chains[table].get(name)
        if c is None:
            c = self.chains[table][name] = []
            if self.on_new is not None:
                self.on_new(table, name)
        return c

    def ordered_chains(self, table):
        """kube-proxy's golden-test order: NODEPORTS, SERVICES, then alphabetical."""
        p = self.prefix
        first = [p + '-NODEPORTS', p + '-SERVICES']
        names = self.chains[table]
        head = [c for c in first if c in names]
        return head + sorted(c for c in names if c not in first)

    def saved_rules(self, table, chain):
        return [s for _k, s in self.chains[table][chain]]

    def payload(self):
        """The iptables-restore input kube-proxy would write (chains grouped)."""
        out = []
        for table in TABLES:
            out.append('*' + table)
            order = self.ordered_chains(table)
            for c in order:
                out.append(':%s - [0:0]' % c)
            for c in order:
                for kp, _s in self.chains[table][c]:
                    out.append('-A %s %s' % (c, kp))
            out.append('COMMIT')
        return '\n'.join(out) + '\n'

    def rule_count(self):
        return dict((t, sum(len(r) for r in self.chains[t].values())) for t in TABLES)


def _jump_specs(prefix, localhost_fw):
    c = chain_names(prefix)
    new = ['-m', 'conntrack', '--ctstate', 'NEW']
    specs = [
        ('filter', c['external_services'], 'INPUT', 'kubernetes externally-visible service portals', new),
        ('filter', c['external_services'], 'FORWARD', 'kubernetes externally-visible service portals', new),
        ('filter', c['nodeports'], 'INPUT', 'kubernetes health check service ports', []),
        ('filter', c['services'], 'FORWARD', 'kubernetes service portals', new),
        ('filter', c['services'], 'OUTPUT', 'kubernetes service portals', new),
        ('filter', c['forward'], 'FORWARD', 'kubernetes forwarding rules', []),
        ('filter', c['proxy_firewall'], 'INPUT', 'kubernetes load balancer firewall', new),
        ('filter', c['proxy_firewall'], 'OUTPUT', 'kubernetes load balancer firewall', new),
        ('filter', c['proxy_firewall'], 'FORWARD', 'kubernetes load balancer firewall', new),
        ('nat', c['services'], 'OUTPUT', 'kubernetes service portals', []),
        ('nat', c['services'], 'PREROUTING', 'kubernetes service portals', []),
        ('nat', c['postrouting'], 'POSTROUTING', 'kubernetes postrouting rules', []),
    ]
    if localhost_fw:
        specs += [('filter', c['firewall'], 'INPUT', '', []), ('filter', c['firewall'], 'OUTPUT', '', [])]
    out = []
    for table, dst, src, comment, extra in specs:
        kp = list(extra)
        saved = list(extra)
        if comment:
            kp += ['-m', 'comment', '--comment', kp_comment(comment)]
            saved += ['-m', 'comment', '--comment', saved_comment(comment)]
        kp += ['-j', dst]
        saved += ['-j', dst]
        out.append((table, src, ' '.join(kp), ' '.join(saved)))
    return out


def render(objects, settings, track=None):
    """Services + EndpointSlices -> Ruleset, exactly as kube-proxy's syncProxyRules."""
    svc_ports, endpoints, skipped = load(objects, settings.node_name)
    rs = _render(svc_ports, endpoints, settings, track=track)
    rs.skipped = skipped
    return rs


def _render(svc_ports, endpoints_map, st, large=None, track=None, on_new=None):
    """large: force kube-proxy's large-cluster mode (a partial render of some Services must use
    the mode of the whole set). track: a dict filled with what each Service (namespace/name)
    contributes - [aggregate rules, own nat chains, endpoints, ports, filter rules, nat rules].
    on_new(table, chain): called as each chain is created (see Ruleset)."""
    p = st.chain_prefix
    cn = chain_names(p)
    rs = Ruleset(p, on_new)
    mark, mark_s = st.mark, st.mark_saved
    f_services = rs.chain('filter', cn['services'])
    f_ext = rs.chain('filter', cn['external_services'])
    f_forward = rs.chain('filter', cn['forward'])
    f_nodeports = rs.chain('filter', cn['nodeports'])
    f_pfw = rs.chain('filter', cn['proxy_firewall'])
    n_services = rs.chain('nat', cn['services'])
    n_nodeports = rs.chain('nat', cn['nodeports'])
    n_post = rs.chain('nat', cn['postrouting'])
    n_masq = rs.chain('nat', cn['mark_masq'])
    MASQ = cn['mark_masq']

    n_post.append(('-m mark ! --mark %s/%s -j RETURN' % (mark, mark),
                   '-m mark ! --mark %s/%s -j RETURN' % (mark_s, mark_s)))
    n_post.append(('-j MARK --xor-mark %s' % mark, '-j MARK --set-xmark %s/0x0' % mark_s))
    rf = ' --random-fully' if st.random_fully else ''
    n_post.append(('-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE' + rf,
                   '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE' + rf))
    n_masq.append(('-j MARK --or-mark %s' % mark, '-j MARK --set-xmark %s/%s' % (mark_s, mark_s)))
    if st.localhost_nodeports:
        rs.chain('filter', cn['firewall']).append((
            '-m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 '
            '-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP',
            '! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" '
            '-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP'))

    local_cidr = str(st.cluster_cidr) if st.cluster_cidr else None
    total = 0
    for sp in svc_ports:
        total += len(endpoints_map.get((sp.name_string, sp.protocol), ()))
    if large is None:
        large = total > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
    rs.large_cluster_mode = large
    aggregates = ((f_services, f_ext, f_nodeports, f_pfw), (n_services, n_nodeports))
    nat_chains = rs.chains['nat']
    rs.services = len(svc_ports)
    rs.endpoints = total

    for sp in svc_ports:
        proto = sp.proto
        name = sp.name_string
        cip = sp.cluster_ip
        port = str(sp.port)
        all_eps = endpoints_map.get((name, sp.protocol), [])
        cluster_eps, local_eps, reachable, has_eps = categorize_endpoints(all_eps, sp)
        if track is not None:
            lengths = [[len(c) for c in cs] for cs in aggregates]
        svc_chain = '%s-SVC-%s' % (p, sp.hash)
        svl_chain = '%s-SVL-%s' % (p, sp.hash)
        ext_chain = '%s-EXT-%s' % (p, sp.hash)
        fw_chain = '%s-FW-%s' % (p, sp.hash)
        uses_cluster_chain = bool(cluster_eps) and sp.uses_cluster_endpoints()
        uses_local_chain = bool(local_eps) and sp.uses_local_endpoints()
        internal_chain = svc_chain
        has_internal = has_eps
        if sp.internal_local:
            internal_chain = svl_chain
            if not local_eps:
                has_internal = False
        external_policy_chain = svc_chain
        has_external = has_eps
        if sp.external_local:
            external_policy_chain = svl_chain
            if not local_eps:
                has_external = False
        uses_ext_chain = has_eps and sp.externally_accessible()
        lb_chain = ext_chain
        uses_fw = has_eps and bool(sp.lb_vips) and bool(sp.lb_source_ranges)
        if uses_fw:
            lb_chain = fw_chain

        int_target = int_comment = ext_target = ext_comment = None
        if not has_eps:
            int_target = ext_target = 'REJECT'
            int_comment = ext_comment = '%s has no endpoints' % name
        else:
            if not has_internal:
                int_target, int_comment = 'DROP', '%s has no local endpoints' % name
            if not has_external:
                ext_target, ext_comment = 'DROP', '%s has no local endpoints' % name

        def filter_rule(comment, dst, dport, target, addrtype=False, proto=proto):
            kp_t = target
            sv_t = target + (' --reject-with icmp-port-unreachable' if target == 'REJECT' else '')
            if addrtype:
                return ('-m comment --comment %s -m addrtype --dst-type LOCAL -m %s -p %s --dport %s -j %s'
                        % (kp_comment(comment), proto, proto, dport, kp_t),
                        '-p %s -m comment --comment %s -m addrtype --dst-type LOCAL -m %s --dport %s -j %s'
                        % (proto, saved_comment(comment), proto, dport, sv_t))
            return ('-m comment --comment %s -m %s -p %s -d %s --dport %s -j %s'
                    % (kp_comment(comment), proto, proto, dst, dport, kp_t),
                    '-d %s/32 -p %s -m comment --comment %s -m %s --dport %s -j %s'
                    % (dst, proto, saved_comment(comment), proto, dport, sv_t))

        def dnat_capture(comment, dst, dport, target, proto=proto):
            return ('-m comment --comment %s -m %s -p %s -d %s --dport %s -j %s'
                    % (kp_comment(comment), proto, proto, dst, dport, target),
                    '-d %s/32 -p %s -m comment --comment %s -m %s --dport %s -j %s'
                    % (dst, proto, saved_comment(comment), proto, dport, target))

        # Capture the clusterIP.
        if has_internal:
            n_services.append(dnat_capture(name + ' cluster IP', cip, port, internal_chain))
        else:
            f_services.append(filter_rule(int_comment, cip, port, int_target))
        # Capture externalIPs.
        for eip in sp.external_ips:
            if has_eps:
                n_services.append(dnat_capture(name + ' external IP', eip, port, ext_chain))
            if not has_external:
                f_ext.append(filter_rule(ext_comment, eip, port, ext_target))
        # Capture load-balancer ingress.
        for vip in sp.lb_vips:
            if has_eps:
                n_services.append(dnat_capture(name + ' loadbalancer IP', vip, port, lb_chain))
            if uses_fw:
                f_pfw.append(filter_rule('%s traffic not accepted by %s' % (name, fw_chain), vip, port, 'DROP'))
        if not has_external:
            for vip in sp.lb_vips:
                f_ext.append(filter_rule(ext_comment, vip, port, ext_target))
        # Capture nodeports.
        if sp.node_port:
            npt = str(sp.node_port)
            if has_eps:
                if st.localhost_nodeports and st.nfacct:
                    n_nodeports.append((
                        '-m comment --comment %s -m %s -p %s -d 127.0.0.0/8 --dport %s -m nfacct '
                        '--nfacct-name %s -j %s' % (kp_comment(name), proto, proto, npt, NFACCT_LOCALHOST_NP,
                                                    ext_chain),
                        '-d 127.0.0.0/8 -p %s -m comment --comment %s -m %s --dport %s -m nfacct '
                        '--nfacct-name  %s -j %s' % (proto, saved_comment(name), proto, npt,
                                                     NFACCT_LOCALHOST_NP, ext_chain)))
                n_nodeports.append((
                    '-m comment --comment %s -m %s -p %s --dport %s -j %s'
                    % (kp_comment(name), proto, proto, npt, ext_chain),
                    '-p %s -m comment --comment %s -m %s --dport %s -j %s'
                    % (proto, saved_comment(name), proto, npt, ext_chain)))
            if not has_external:
                f_ext.append(filter_rule(ext_comment, None, npt, ext_target, addrtype=True))
        # Capture healthCheckNodePorts.
        if sp.health_check_node_port:
            c = '%s health check node port' % name
            hp = str(sp.health_check_node_port)
            f_nodeports.append((
                '-m comment --comment %s -m tcp -p tcp --dport %s -j ACCEPT' % (kp_comment(c), hp),
                '-p tcp -m comment --comment %s -m tcp --dport %s -j ACCEPT' % (saved_comment(c), hp)))

        # Internal traffic handling.
        if has_internal:
            c = name + ' cluster IP'
            kp_args = '-m comment --comment %s -m %s -p %s -d %s --dport %s' % (kp_comment(c), proto, proto, cip, port)
            if st.masquerade_all:
                rs.chain('nat', internal_chain).append((
                    kp_args + ' -j ' + MASQ,
                    '-d %s/32 -p %s -m comment --comment %s -m %s --dport %s -j %s'
                    % (cip, proto, saved_comment(c), proto, port, MASQ)))
            elif local_cidr:
                rs.chain('nat', internal_chain).append((
                    kp_args + ' ! -s %s -j %s' % (local_cidr, MASQ),
                    '! -s %s -d %s/32 -p %s -m comment --comment %s -m %s --dport %s -j %s'
                    % (local_cidr, cip, proto, saved_comment(c), proto, port, MASQ)))

        # External traffic handling.
        if uses_ext_chain:
            ext = rs.chain('nat', ext_chain)
            if not sp.external_local:
                c = 'masquerade traffic for %s external destinations' % name
                ext.append(('-m comment --comment %s -j %s' % (kp_comment(c), MASQ),
                            '-m comment --comment %s -j %s' % (saved_comment(c), MASQ)))
            else:
                if local_cidr:
                    c = 'pod traffic for %s external destinations' % name
                    ext.append(('-m comment --comment %s -s %s -j %s' % (kp_comment(c), local_cidr, svc_chain),
                                '-s %s -m comment --comment %s -j %s' % (local_cidr, saved_comment(c), svc_chain)))
                c = 'masquerade LOCAL traffic for %s external destinations' % name
                ext.append(('-m comment --comment %s -m addrtype --src-type LOCAL -j %s' % (kp_comment(c), MASQ),
                            '-m comment --comment %s -m addrtype --src-type LOCAL -j %s'
                            % (saved_comment(c), MASQ)))
                c = 'route LOCAL traffic for %s external destinations' % name
                ext.append(('-m comment --comment %s -m addrtype --src-type LOCAL -j %s' % (kp_comment(c), svc_chain),
                            '-m comment --comment %s -m addrtype --src-type LOCAL -j %s'
                            % (saved_comment(c), svc_chain)))
            if has_external:
                ext.append(('-j ' + external_policy_chain, '-j ' + external_policy_chain))

        # Firewall chain.
        if uses_fw:
            fw = rs.chain('nat', fw_chain)
            c = '%s loadbalancer IP' % name
            allow_from_node = False
            for cidr in sp.lb_source_ranges:
                fw.append(('-m comment --comment %s -s %s -j %s' % (kp_comment(c), cidr, ext_chain),
                           '-s %s -m comment --comment %s -j %s' % (cidr, saved_comment(c), ext_chain)))
                if st.node_ip is not None and st.node_ip in cidr:
                    allow_from_node = True
            if allow_from_node:
                for vip in sp.lb_vips:
                    fw.append(('-m comment --comment %s -s %s -j %s' % (kp_comment(c), vip, ext_chain),
                               '-s %s/32 -m comment --comment %s -j %s' % (vip, saved_comment(c), ext_chain)))
            c = 'other traffic to %s will be dropped by %s' % (name, cn['proxy_firewall'])
            fw.append(('-m comment --comment %s' % kp_comment(c), '-m comment --comment %s' % saved_comment(c)))

        if uses_cluster_chain:
            _service_to_endpoints(rs, sp, svc_chain, cluster_eps, large)
        if uses_local_chain:
            _service_to_endpoints(rs, sp, svl_chain, local_eps, large)

        # Per-endpoint chains.
        for e in reachable:
            sep = '%s-SEP-%s' % (p, e.chain_hash)
            chain = rs.chain('nat', sep)
            kc = '' if large else ' -m comment --comment %s' % kp_comment(name)
            sc = '' if large else ' -m comment --comment %s' % saved_comment(name)
            chain.append(('%s -s %s -j %s' % (kc, e.ip, MASQ), '-s %s/32%s -j %s' % (e.ip, sc, MASQ)))
            if sp.affinity_timeout:
                chain.append((
                    '%s -m recent --name %s --set -m %s -p %s -j DNAT --to-destination %s'
                    % (kc, sep, proto, proto, e.string),
                    '-p %s%s -m recent --set --name %s --mask 255.255.255.255 --rsource -m %s -j DNAT '
                    '--to-destination %s' % (proto, sc, sep, proto, e.string)))
            else:
                chain.append(('%s -m %s -p %s -j DNAT --to-destination %s' % (kc, proto, proto, e.string),
                              '-p %s%s -m %s -j DNAT --to-destination %s' % (proto, sc, proto, e.string)))
            chain[-2] = (chain[-2][0].lstrip(), chain[-2][1].lstrip())
            chain[-1] = (chain[-1][0].lstrip(), chain[-1][1].lstrip())

        if track is not None:
            _track(track, sp, aggregates, lengths, nat_chains, all_eps, reachable,
                   (svc_chain, svl_chain, ext_chain, fw_chain))

    # Tail-call to the nodeports chain: after all other service portal rules.
    c = 'kubernetes service nodeports; NOTE: this must be the last rule in this chain'
    if st.nodeport_match_all():
        if st.localhost_nodeports:
            n_services.append(('-m comment --comment %s -m addrtype --dst-type LOCAL -j %s'
                               % (kp_comment(c), cn['nodeports']),
                               '-m comment --comment %s -m addrtype --dst-type LOCAL -j %s'
                               % (saved_comment(c), cn['nodeports'])))
        else:
            n_services.append(('-m comment --comment %s -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j %s'
                               % (kp_comment(c), cn['nodeports']),
                               '! -d 127.0.0.0/8 -m comment --comment %s -m addrtype --dst-type LOCAL -j %s'
                               % (saved_comment(c), cn['nodeports'])))
    else:
        for ip in st.selected_nodeport_ips():
            if ip.is_loopback and not st.localhost_nodeports:
                continue
            n_services.append(('-m comment --comment %s -d %s -j %s' % (kp_comment(c), ip, cn['nodeports']),
                               '-d %s/32 -m comment --comment %s -j %s' % (ip, saved_comment(c), cn['nodeports'])))

    if not st.conntrack_tcp_be_liberal:
        if st.nfacct:
            f_forward.append(('-m conntrack --ctstate INVALID -m nfacct --nfacct-name %s -j DROP' % NFACCT_CT_INVALID,
                              '-m conntrack --ctstate INVALID -m nfacct --nfacct-name  %s -j DROP'
                              % NFACCT_CT_INVALID))
        else:
            f_forward.append(('-m conntrack --ctstate INVALID -j DROP', '-m conntrack --ctstate INVALID -j DROP'))
    f_forward.append(('-m comment --comment "kubernetes forwarding rules" -m mark --mark %s/%s -j ACCEPT'
                      % (mark, mark),
                      '-m comment --comment "kubernetes forwarding rules" -m mark --mark %s/%s -j ACCEPT'
                      % (mark_s, mark_s)))
    f_forward.append(('-m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
                      'RELATED,ESTABLISHED -j ACCEPT',
                      '-m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
                      'RELATED,ESTABLISHED -j ACCEPT'))
    rs.jumps = _jump_specs(p, st.localhost_nodeports)
    return rs


def _track(track, sp, aggregates, lengths, nat_chains, all_eps, reachable, own):
    key = '%s/%s' % (sp.namespace, sp.name)
    t = track.get(key)
    if t is None:
        t = track[key] = [[], [], 0, 0, 0, 0]
    contrib = t[0]
    n_filter = 0
    for ti, cs in enumerate(aggregates):
        for ci, c in enumerate(cs):
            n0 = lengths[ti][ci]
            if len(c) > n0:
                contrib.append('%d.%d' % (ti, ci))
                contrib.extend(r for _k, r in c[n0:])
                if ti == 0:
                    n_filter += len(c) - n0
                else:
                    t[5] += len(c) - n0
    chains = t[1]
    for c in own:
        if c in nat_chains and c not in chains:
            chains.append(c)
            t[5] += len(nat_chains[c])
    for e in reachable:
        c = '%s-SEP-%s' % (own[0].split('-SVC-')[0], e.chain_hash)
        if c not in chains:
            chains.append(c)
            t[5] += len(nat_chains[c])
    t[2] += len(all_eps)
    t[3] += 1
    t[4] += n_filter


def _service_to_endpoints(rs, sp, chain_name, endpoints, large):
    chain = rs.chain('nat', chain_name)
    name = sp.name_string
    p = rs.prefix
    if sp.affinity_timeout:
        for e in endpoints:
            sep = '%s-SEP-%s' % (p, e.chain_hash)
            c = '%s -> %s' % (name, e.string)
            kc = '' if large else '-m comment --comment %s ' % kp_comment(c)
            sc = '' if large else '-m comment --comment %s ' % saved_comment(c)
            chain.append(('%s-m recent --name %s --rcheck --seconds %d --reap -j %s'
                          % (kc, sep, sp.affinity_timeout, sep),
                          '%s-m recent --rcheck --seconds %d --reap --name %s --mask 255.255.255.255 --rsource -j %s'
                          % (sc, sp.affinity_timeout, sep, sep)))
    n = len(endpoints)
    for i, e in enumerate(endpoints):
        sep = '%s-SEP-%s' % (p, e.chain_hash)
        c = '%s -> %s' % (name, e.string)
        kc = '' if large else '-m comment --comment %s ' % kp_comment(c)
        sc = '' if large else '-m comment --comment %s ' % saved_comment(c)
        if i < n - 1:
            prob = compute_probability(n - i)
            chain.append(('%s-m statistic --mode random --probability %s -j %s' % (kc, prob, sep),
                          '%s-m statistic --mode random --probability %s -j %s' % (sc, saved_probability(prob), sep)))
        else:
            chain.append(('%s-j %s' % (kc, sep), '%s-j %s' % (sc, sep)))


# --------------------------------------------------------------------------- the manager

def read_source_texts(paths):
    """[(path, text)] of the src files (read, not parsed: an unchanged input is never parsed)."""
    out = []
    for i, path in enumerate(paths or []):
        try:
            with open(path, 'r') as f:
                out.append((path, f.read()))
        except (IOError, OSError) as e:
            raise _err('cannot read %s: %s' % (path, e.strerror or e), 'src[%d]' % i, path)
    return out


def parse_source_texts(texts, yaml_mod):
    """YAML (one or many documents; JSON is YAML too) -> objects, with libyaml when available."""
    out = []
    for i, (path, text) in enumerate(texts):
        field = 'src[%d]' % i
        stripped = text.lstrip()
        if stripped[:1] in ('{', '['):
            try:
                doc = json.loads(text)
            except ValueError:
                doc = None
            else:
                docs = doc if isinstance(doc, list) else [doc]
                out.extend(d for d in docs if d is not None)
                continue
        if yaml_mod is None:
            raise _err('reading YAML needs PyYAML', field, path)
        loader = getattr(yaml_mod, 'CSafeLoader', None) or yaml_mod.SafeLoader
        try:
            docs = list(yaml_mod.load_all(text, Loader=loader))
        except yaml_mod.YAMLError as e:
            raise _err('%s is not valid YAML: %s' % (path, e), field, path)
        out.extend(d for d in docs if d is not None)
    return out


def read_object_files(paths, yaml_mod):
    return parse_source_texts(read_source_texts(paths), yaml_mod)


def _read_sysctl(proc_root, name):
    try:
        with open(os.path.join(proc_root, 'sys', name), 'r') as f:
            return f.read().strip()
    except (IOError, OSError):
        return None


def _local_ipv4_addresses():
    """The IPv4 addresses of this (network namespace's) node, for nodeport_addresses."""
    p = subprocess.run(['ip', '-4', '-o', 'addr', 'show'], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, check=False)
    out = []
    for line in p.stdout.splitlines():
        parts = line.split()
        if 'inet' in parts:
            out.append(parts[parts.index('inet') + 1].split('/')[0])
    return out


# Bump whenever the rendered rules change for the same input: records of another rendering are
# then not trusted (a full render and plan follows).
RENDER_VERSION = 2
_sha1 = hashlib.sha1


# marshal format 2 has no back-references (3 and later emit them depending on reference
# counts), so equal input always gives the same bytes; and what marshal writes loads back to
# the same value, so different input never does. Three times faster than repr.
_MARSHAL_FORMAT = 2


def object_digests(objects):
    """Each object's canonical encoding (marshal format 2 of the decoded JSON/YAML value): equal
    objects give equal bytes, different objects different bytes. Hashed per Service later."""
    dumps = marshal.dumps
    try:
        return [dumps(o, _MARSHAL_FORMAT) for o in objects]
    except ValueError:
        # something marshal does not take (a YAML timestamp, a str subclass): repr, which is
        # as deterministic for such input, tagged so the two encodings never meet
        return [_encode_one(o) for o in objects]


def _encode_one(o):
    try:
        return marshal.dumps(o, _MARSHAL_FORMAT)
    except ValueError:
        return b'repr:' + repr(o).encode('utf-8', 'surrogatepass')


def group_by_service(objects, digests, keys=None):
    """{service key: fingerprint of the Service and its EndpointSlices}, {key: [objects]}, or
    (None, None) when the input is anything but plain Services and EndpointSlices each naming a
    given Service once (Lists, Endpoints, errors...): then only the full render handles it.
    keys: a list that gets each object's Service key, in input order."""
    fps, members = {}, {}
    slices = []
    if keys is None:
        keys = []
    add_key = keys.append
    for i, o in enumerate(objects):
        d = digests[i]
        if not isinstance(o, dict):
            return None, None
        kind = o.get('kind')
        meta = o.get('metadata')
        if not isinstance(meta, dict):
            return None, None
        ns = meta.get('namespace') or 'default'
        if kind == 'Service':
            name = meta.get('name')
            if not isinstance(name, str) or not isinstance(ns, str):
                return None, None
            key = ns + '/' + name
            if key in fps:
                return None, None
            fps[key] = [d]
            members[key] = [o]
            add_key(key)
        elif kind == 'EndpointSlice':
            labels = meta.get('labels')
            svc = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
            if not isinstance(svc, str) or not isinstance(ns, str):
                return None, None
            slices.append((ns + '/' + svc, o, d))
            add_key(ns + '/' + svc)
        else:
            return None, None
    for key, o, d in slices:
        fp = fps.get(key)
        if fp is None:
            return None, None
        fp.append(d)
        members[key].append(o)
    join = b'\0'.join
    return dict((k, _sha1(join(v)).hexdigest()[:24]) for k, v in fps.items()), members


def object_fingerprints(digests):
    """Per-object fingerprints kept in the record (16 bytes of the sha1 of each encoding)."""
    sha1 = _sha1
    return [sha1(d).digest()[:16] for d in digests]


def object_record(objects, digests, keys):
    """What the record keeps about the input, object by object: fingerprint, Service key, kind
    ('S' Service, 'E' EndpointSlice) - so the next run finds the changed Services by comparing
    fingerprints, without looking into the unchanged objects at all."""
    return dict(objects=object_fingerprints(digests), okeys=keys,
                okinds=''.join('S' if o.get('kind') == 'Service' else 'E' for o in objects))


def changed_by_object(objects, digests, body):
    """The Services whose objects changed, from the record's per-object fingerprints, when the
    input holds the same objects in the same places (same kinds, same Services): the usual
    case of one EndpointSlice or Service rewritten. -> ({key: new fingerprint}, {key:
    [objects]}, new object record) or None (then group_by_service decides)."""
    old, okeys, okinds = body.get('objects'), body.get('okeys'), body.get('okinds')
    n = len(objects)
    if not (isinstance(old, list) and isinstance(okeys, list) and isinstance(okinds, str)
            and len(old) == n and len(okeys) == n and len(okinds) == n):
        return None
    new = object_fingerprints(digests)
    changed = set()
    for i in [i for i in range(n) if new[i] != old[i]]:
        o = objects[i]
        if not isinstance(o, dict) or not isinstance(o.get('metadata'), dict):
            return None
        kind, meta = o.get('kind'), o['metadata']
        ns = meta.get('namespace') or 'default'
        if kind == 'Service' and okinds[i] == 'S':
            name = meta.get('name')
        elif kind == 'EndpointSlice' and okinds[i] == 'E':
            labels = meta.get('labels')
            name = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
        else:
            return None
        if not isinstance(ns, str) or not isinstance(name, str) or ns + '/' + name != okeys[i]:
            return None            # an object moved to another Service: group everything
        changed.add(okeys[i])
    at = {}
    for j, k in enumerate(okeys):
        if k in changed:
            at.setdefault(k, []).append(j)
    fps, members = {}, {}
    join = b'\0'.join
    for k, idx in at.items():
        idx.sort(key=lambda j: okinds[j] != 'S')     # the Service first, then its slices in order
        members[k] = [objects[j] for j in idx]
        fps[k] = _sha1(join(digests[j] for j in idx)).hexdigest()[:24]
    return fps, members, dict(objects=new, okeys=okeys, okinds=okinds)


def changed_by_group(old, groups):
    """{key: new fingerprint} of the Services that changed, or None when a Service was added,
    removed or renamed (the shared chains change: full sync)."""
    if not isinstance(old, dict) or len(old) != len(groups):
        return None
    changed = {}
    for key, fp in groups.items():
        entry = old.get(key)
        if entry is None:
            return None
        if entry[0] != fp:
            changed[key] = fp
    return changed


def sync_service_rules(params, check_mode=False, want_diff=False, yaml_mod=None, backend=None, stream=True):
    """The kube_svc_rules module: render, observe, plan the partial sync, apply once.
    stream=False: never stream a first sync into iptables-restore (tests compare both ways)."""
    # Tens of thousands of short-lived rule strings and objects: the cyclic collector would
    # rescan them again and again (a third of the run time at 10,000 Services) for no gain.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _sync_service_rules(params, check_mode, want_diff, yaml_mod, backend, stream)
    finally:
        if enabled:
            gc.enable()


def _settings(params, apply_, proc_root):
    liberal = params.get('conntrack_tcp_be_liberal')
    if liberal is None:
        liberal = apply_ and _read_sysctl(proc_root, 'net/netfilter/nf_conntrack_tcp_be_liberal') not in (None, '0')
    nodeport_ips = params.get('nodeport_ips')
    if params.get('nodeport_addresses') and not nodeport_ips and apply_:
        nodeport_ips = _local_ipv4_addresses()
    return Settings(
        node_name=params.get('node_name'), node_ip=params.get('node_ip'),
        cluster_cidr=params.get('cluster_cidr'), masquerade_bit=params.get('masquerade_bit', 14),
        masquerade_all=params.get('masquerade_all', False),
        nodeport_addresses=params.get('nodeport_addresses'), nodeport_ips=nodeport_ips,
        localhost_nodeports=params.get('localhost_nodeports', True),
        random_fully=params.get('random_fully', True), conntrack_tcp_be_liberal=liberal,
        nfacct=params.get('nfacct', False), chain_prefix=params.get('chain_prefix') or 'KUBE')


def settings_fingerprint(st):
    return _sha1(repr((RENDER_VERSION, st.chain_prefix, st.node_name, str(st.node_ip), str(st.cluster_cidr),
                       st.masquerade_bit, st.masquerade_all, [str(n) for n in st.nodeport_addresses],
                       [str(a) for a in st.nodeport_ips], st.localhost_nodeports, st.random_fully,
                       st.conntrack_tcp_be_liberal, st.nfacct)).encode('utf-8')).hexdigest()[:24]


def _sync_service_rules(params, check_mode, want_diff, yaml_mod, backend, stream=True):
    from ansible_collections.barepod.linux.plugins.module_utils import _iptables

    state = params.get('state') or 'present'
    if state not in ('present', 'absent'):
        raise _err('must be present or absent', 'state', state)
    resync = params.get('resync') or 'auto'
    if resync not in ('auto', 'always'):
        raise _err('must be auto or always', 'resync', resync)
    inline = params.get('objects') or []
    texts = read_source_texts(params.get('src')) if state == 'present' else []
    proc_root = params.get('proc_root') or '/proc'
    apply_ = params.get('apply', True)
    return_payload = params.get('return_payload', True)
    settings = _settings(params, apply_, proc_root)
    prefix = settings.chain_prefix

    if not apply_:
        rs = render(list(inline) + parse_source_texts(texts, yaml_mod), settings)
        result = _facts(rs, prefix)
        if return_payload:
            result['payload'] = rs.payload()
        result['chains'] = dict(desired=['%s/%s' % (t, c) for t in TABLES for c in rs.ordered_chains(t)])
        return result

    if backend is None:
        backend = _iptables.Backend(params.get('backend') or 'auto', save=params.get('iptables_save'),
                                    restore=params.get('iptables_restore'), iptables=params.get('iptables'),
                                    proc_net=os.path.join(proc_root, 'net'))
    canary = prefix + '-PROXY-CANARY'
    paths = _record_paths(params.get('state_dir') or DEFAULT_STATE_DIR, proc_root, backend.mode, prefix)

    # What is there: kube-proxy keeps it in memory and trusts it while its canary chain
    # survives; we keep it in a record (a small head and a body with every chain's fingerprint
    # and what each Service contributed), trusted the same way (resync=auto). Otherwise, and
    # always for --diff, iptables-save is the truth.
    # Like kube-proxy, compare with the kernel again every full_sync_period (FullSyncPeriod, an
    # hour) - except in large cluster mode, where kube-proxy skips the periodic full sync too.
    period = params.get('full_sync_period')
    period = 3600 if period is None else period
    if isinstance(period, bool) or not isinstance(period, int) or period < 0:
        raise _err('must be a number of seconds (0: never)', 'full_sync_period', period)
    head = _load_json(paths[0]) if (resync == 'auto' and not want_diff) else None
    trusted = False
    now = time.time()
    reason = '--diff' if want_diff else 'resync=always' if resync == 'always' else 'no record'
    if head is not None:
        token = _iptables.canary_token(backend.list_chain('mangle', canary), canary)
        trusted = token is not None and token == head.get('token')
        reason = 'record trusted (canary token matches)' if trusted else 'canary token differs from the record'
        age = now - (head.get('full_sync_at') or 0)
        if trusted and period and age > period and not (head.get('facts') or {}).get('large_cluster_mode'):
            trusted = False
            reason = 'periodic full sync (last one %d s ago)' % age
        if not trusted:
            head = None

    # Fast paths (Services and EndpointSlices unchanged, or only some Services changed): from
    # the record, without rendering everything, without iptables-save.
    settings_fp = settings_fingerprint(settings)
    objects = list(inline)
    # Without a trusted record the digests serve only the next record: computed while the
    # restore runs (below), not before.
    input_fp = digests = None
    if state == 'present' and trusted:
        digests = object_digests(inline)
        input_fp = _input_fingerprint(digests, texts, settings_fp)
        if not return_payload and head.get('input_fp') == input_fp:
            result = dict(head['facts'], changed=False, chain_prefix=prefix, backend=backend.mode,
                          backend_reason=backend.reason, sync='recorded', sync_reason=reason, render='none',
                          restore_payload='', chains=_iptables.SyncPlan().summary(), restores=0)
            return result
    if texts:
        more = parse_source_texts(texts, yaml_mod)
        objects += more
        if digests is not None:
            digests = digests + object_digests(more)
    body = None
    groups = members = okeys = None
    if state == 'present' and trusted:
        tried = False
        if not return_payload and head.get('settings_fp') == settings_fp:
            body = _load_body(paths[1])
            if body is None or body.get('id') != head.get('body_id'):
                body = None
            else:
                hit = changed_by_object(objects, digests, body)
                if hit is not None:
                    tried = True
                    res = _partial(params, check_mode, settings, backend, paths, head, body, hit[0], hit[1],
                                   input_fp, _iptables, hit[2])
                    if res is not None:
                        res['sync_reason'] = reason
                        return res
        okeys = []
        groups, members = group_by_service(objects, digests, keys=okeys)
        if body is not None and groups is not None and not tried:
            changed = changed_by_group(body.get('services'), groups)
            if changed is not None:
                res = _partial(params, check_mode, settings, backend, paths, head, body, changed, members,
                               input_fp, _iptables, object_record(objects, digests, okeys))
                if res is not None:
                    res['sync_reason'] = reason
                    return res

    # Full sync. Without a trusted record the kernel is the truth: iptables-save runs while the
    # input is validated.
    save_proc = None if trusted else backend.start_save()
    try:
        model = load(objects, settings.node_name) if state == 'present' else None
    except BaseException:
        if save_proc is not None:
            save_proc.kill()
            save_proc.communicate()
        raise
    existing = None
    record = None
    if trusted:
        if body is None:
            body = _load_body(paths[1])
        if body is not None and body.get('id') == head.get('body_id'):
            record = dict(head, tables=body.get('tables'))
            existing = _iptables.tables_from_record(record)
    sync = 'recorded' if existing is not None else 'iptables-save'
    if trusted and existing is None:
        reason = 'record body missing or stale'
    canary_present = existing is not None
    if existing is None:
        text = backend.collect_save(save_proc) if save_proc is not None else backend.save()
        existing = _iptables.parse_save(text, tables=TABLES)
        canary_present = (':%s ' % canary) in text
        record = None
        found = _iptables.canary_token(text, canary)
        if found and found.startswith('barepod kube_svc_rules '):
            record = dict(token=found)  # the canary stays; the record is rewritten after a sync
    # KUBE-FIREWALL and KUBE-MARK-MASQ are shared with kubelet: kube-proxy's CleanupLeftovers
    # leaves them. We remove them only where we created them (they did not exist before our
    # first sync, as the record and the canary token say), so a barepod-only host is left clean.
    created = _created_shared(prefix, record, existing, token_found=record.get('token') if record else None)
    keep = set((t, c) for t, c in shared_chains(prefix) if '%s/%s' % (t, c) not in created)
    token = record.get('token') if record else None

    def owns(table, chain):
        return owns_chain(prefix, table, chain)

    track = {} if state == 'present' else None
    nat_now = existing.get('nat')
    # A first sync (the nat table holds none of our chains) on iptables-legacy: every nat chain
    # is new, so the restore can start now and parse the chains as they are rendered. Not on
    # nft: iptables-nft-restore wants the declarations sorted (in render order it takes 63 s
    # instead of 14.6 s for 10,000 Services), and there the restore dwarfs our work anyway.
    streamed = (state == 'present' and stream and backend.mode == 'legacy' and sync == 'iptables-save'
                and not check_mode and not want_diff
                and not any(owns('nat', c) for c in (nat_now.chains if nat_now else ())))
    if streamed:
        _remove_record(paths)
        failpoint('rules-before-restore')
        rs, plan, token, stream_ = _stream_first_sync(backend, model, settings, existing, keep, owns, token,
                                                      created, track, _iptables)
        payload = plan.payload
        desired = dict((t, dict((c, rs.saved_rules(t, c)) for c in rs.ordered_chains(t))) for t in TABLES)
        jumps = [(t, src, saved) for t, src, _kp, saved in rs.jumps]
        hashes = None
    else:
        if state == 'present':
            rs = _render(model[0], model[1], settings, track=track)
            rs.skipped = model[2]
        else:
            rs = Ruleset(prefix)
            rs.skipped = []
        desired = dict((t, dict((c, rs.saved_rules(t, c)) for c in rs.ordered_chains(t))) for t in TABLES)
        jumps = [(t, src, saved) for t, src, _kp, saved in rs.jumps]
        # written in kube-proxy's own spelling (the batch reads like kube-proxy's), compared in
        # iptables-save's
        hashes = _chain_hashes(desired, _iptables) if sync == 'recorded' else None
        plan = _iptables.plan_sync(existing, desired, jumps, owns=owns, keep=keep, tables=TABLES, hashes=hashes,
                                   sides=want_diff, write=lambda t, c: [k for k, _s in rs.chains[t][c]])
        payload = plan.payload
        if plan:
            if state == 'present' and not token:
                token = _new_token(created)
                payload = _iptables.add_canary(payload, 'mangle', canary, token)
            elif state == 'absent' and canary_present:
                payload = _iptables.remove_canary(payload, 'mangle', canary)
    result = _facts(rs, prefix)
    result['render'] = 'full' if state == 'present' else 'none'
    result['backend'] = backend.mode
    result['backend_reason'] = backend.reason
    result['sync'] = sync
    result['sync_reason'] = reason
    result['chains'] = plan.summary()
    result['restore_payload'] = payload
    result['changed'] = bool(plan)
    if want_diff:
        before, after = _iptables.diff_text(plan)
        result['diff'] = dict(before=before, after=after)
    write_record = state == 'present' and not check_mode and resync == 'auto' and not want_diff and token and (
        plan or not trusted or head.get('input_fp') != input_fp)
    if plan and not check_mode and not streamed:
        # The record goes first: should the restore fail half-way (iptables-legacy commits table
        # by table) or the run die, the next run compares with iptables-save instead of
        # trusting a record that no longer describes the kernel.
        _remove_record(paths)
        failpoint('rules-before-restore')
        backend.restore(payload)
        if state == 'absent':
            _remove_record(paths)
    record = None
    try:
        if write_record:
            # (after a streamed sync this runs while iptables-restore parses and commits)
            if digests is None:
                digests = object_digests(objects)
                input_fp = _input_fingerprint(digests[:len(inline)], texts, settings_fp)
            if groups is None and okeys is None:
                okeys = []
                groups, _members = group_by_service(objects, digests, keys=okeys)
            services = None
            if groups is not None:
                services = {}
                for key, fp in groups.items():
                    t = track.get(key)
                    if t is None:   # headless, ExternalName, IPv6: no rules
                        services[key] = [fp, '', 0, [], 0, 0, 0, 1]
                    else:
                        services[key] = [fp, _contrib_fp(t[0]), t[2], t[1], t[3], t[4], t[5], 0]
            record = (dict(version=RECORD_VERSION, backend=backend.mode, prefix=prefix, token=token, created=created,
                           jumps=_jumps_by_chain(jumps), settings_fp=settings_fp, input_fp=input_fp,
                           full_sync_at=now if sync == 'iptables-save' else head.get('full_sync_at'),
                           facts=dict((k, result[k]) for k in FACT_KEYS)),
                      dict(object_record(objects, digests, okeys) if groups is not None else {},
                           tables=hashes or _chain_hashes(desired, _iptables), services=services))
    finally:
        if streamed:
            stream_.finish()   # raises when the restore failed: then no record
    if record is not None:
        _write_record(paths, *record)
    if return_payload:
        result['payload'] = rs.payload() if state == 'present' else ''
    result['restores'] = backend.restores
    return result


def _input_fingerprint(inline_digests, texts, settings_fp):
    """What the input was: the inline objects, the src files' texts, the settings."""
    h = _sha1(b''.join(inline_digests))
    for _path, text in texts:
        h.update(_sha1(text.encode('utf-8')).digest())
    h.update(settings_fp.encode('ascii'))
    return h.hexdigest()[:24]


def _chain_hashes(desired, _iptables):
    chain_hash = _iptables.chain_hash
    return dict((t, dict((c, chain_hash(r)) for c, r in desired[t].items())) for t in TABLES)


def _new_token(created):
    token = 'barepod kube_svc_rules %s' % uuid.uuid4().hex
    if created:
        token += ' created=' + ','.join(created)
    return token


def _stream_first_sync(backend, model, settings, existing, keep, owns, token, created, track, _iptables):
    """A full sync into a nat table that holds none of our chains, streamed (iptables-legacy):
    iptables-restore starts before the rendering does and parses each nat chain's declaration as
    the chain comes into being (libiptc does not mind their order), then the rules in the order
    of the chains (kube-proxy's sorted order: libiptc builds the table a fifth faster that way
    than in render order); the small filter table and the canary follow, planned as usual. The batch differs from the unstreamed one only in the
    order of the tables (nat first: nothing but it is known early) and of the nat declarations.
    -> (Ruleset, SyncPlan, token, the RestoreStream still running: finish() it)."""
    prefix = settings.chain_prefix
    stream = backend.stream()
    try:
        stream.write('*nat\n')

        def declare(table, chain):
            if table == 'nat':
                stream.write(':%s - [0:0]\n' % chain)
        rs = _render(model[0], model[1], settings, track=track, on_new=declare)
        rs.on_new = None
        rs.skipped = model[2]
        stream.flush()
        failpoint('rules-while-streaming')   # declarations sent, no COMMIT: nothing may apply
        plan = _iptables.SyncPlan()
        nat = rs.chains['nat']
        for c in rs.ordered_chains('nat'):
            plan.added.append('nat/' + c)
            head = '-A %s ' % c
            stream.write(''.join([head + k + '\n' for k, _s in nat[c]]))
        jumps = [(t, src, saved) for t, src, _kp, saved in rs.jumps]
        for src, rule in _iptables.missing_jumps(existing.get('nat'), jumps, 'nat'):
            stream.write(_iptables.jump_insert(src, rule) + '\n')
            plan.jumps_added.append('nat/%s %s' % (src, rule))
        stream.write('COMMIT\n')
        if failpoint_armed('rules-between-tables'):
            stream.finish()          # the nat table applied, then the sync dies
            failpoint('rules-between-tables')
        desired = {'filter': dict((c, rs.saved_rules('filter', c)) for c in rs.ordered_chains('filter'))}
        fplan = _iptables.plan_sync(existing, desired, jumps, owns=owns, keep=keep, tables=('filter',), sides=False,
                                    write=lambda t, c: [k for k, _s in rs.chains[t][c]])
        stream.write(fplan.payload)
        for attr in ('added', 'changed', 'removed', 'jumps_added', 'jumps_removed'):
            getattr(plan, attr).extend(getattr(fplan, attr))
        if not token:
            token = _new_token(created)
            stream.write(_iptables.add_canary('', 'mangle', prefix + '-PROXY-CANARY', token))
        stream.flush()
    except BaseException:
        stream.abort()
        raise
    plan.payload = stream.text()
    return rs, plan, token, stream


FACT_KEYS = ('services', 'endpoints', 'large_cluster_mode', 'skipped', 'rules')
RECORD_VERSION = 3


def _facts(rs, prefix):
    return dict(changed=False, services=rs.services, endpoints=rs.endpoints,
                large_cluster_mode=rs.large_cluster_mode, skipped=rs.skipped,
                rules=rs.rule_count(), chain_prefix=prefix)


def _contrib_fp(contrib):
    return _sha1('\n'.join(contrib).encode('utf-8')).hexdigest()[:24]


def _partial(params, check_mode, settings, backend, paths, head, body, new_fps, members, input_fp, _iptables,
             objrec):
    """Only some Services changed (kube-proxy's partial sync, from the record): render those
    alone, and when what they put into the shared chains (KUBE-SERVICES, KUBE-NODEPORTS, the
    filter chains) is unchanged, plan and write only their own chains. None: do a full sync.
    new_fps: {key: new fingerprint} of the changed Services (all in the record); objrec: the
    per-object part of the next record."""
    old = body.get('services')
    if not isinstance(old, dict):
        return None
    changed = []
    for key in new_fps:
        entry = old.get(key)
        if entry is None:
            return None            # a Service added (or renamed): the shared chains change
        if entry[7]:
            return None            # it had no rules (headless...): let the full render decide
        changed.append(key)
    sub = []
    for key in changed:
        sub.extend(members[key])
    svc_ports, endpoints, skipped = load(sub, settings.node_name)   # validates the changed input
    if skipped:
        return None
    facts = dict(head['facts'])
    total = facts['endpoints'] - sum(old[k][2] for k in changed) + sum(
        len(endpoints.get((sp.name_string, sp.protocol), ())) for sp in svc_ports)
    large = total > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
    if large != facts['large_cluster_mode']:
        return None
    track = {}
    rs = _render(svc_ports, endpoints, settings, large=large, track=track)
    for key in changed:
        t = track.get(key)
        if t is None or _contrib_fp(t[0]) != old[key][1]:
            return None            # its cluster IP, ports, node ports... changed: full sync
    nat = _iptables.Table('nat')
    tables = body['tables']
    for key in changed:
        for c in old[key][3]:
            nat.chains[c] = '-'
            nat.rules[c] = tables['nat'].get(c, '')
    want = {}
    for key in changed:
        for c in track[key][1]:
            want[c] = rs.saved_rules('nat', c)
    want = dict((c, want[c]) for c in sorted(want))
    hashes = {'nat': dict((c, _iptables.chain_hash(r)) for c, r in want.items())}
    prefix = settings.chain_prefix
    plan = _iptables.plan_sync({'nat': nat}, {'nat': want}, [], owns=lambda t, c: owns_chain(prefix, t, c),
                               tables=('nat',), hashes=hashes,
                               write=lambda t, c: [k for k, _s in rs.chains[t][c]])
    for key in changed:
        e = old[key]
        t = track[key]
        facts['services'] += t[3] - e[4]
        facts['rules'] = dict(facts['rules'], filter=facts['rules']['filter'] + t[4] - e[5],
                              nat=facts['rules']['nat'] + t[5] - e[6])
    facts['endpoints'] = total
    result = dict(facts, changed=bool(plan), chain_prefix=prefix, backend=backend.mode,
                  backend_reason=backend.reason, sync='recorded', render='partial (%d of %d Services)'
                  % (len(changed), len(old)), restore_payload=plan.payload, chains=plan.summary())
    if not check_mode:
        if plan:
            _remove_record(paths)
            failpoint('rules-before-restore')
            backend.restore(plan.payload)
        nat_hashes = tables['nat']
        for key in changed:
            for c in old[key][3]:
                nat_hashes.pop(c, None)
            old[key] = [new_fps[key], old[key][1], track[key][2], track[key][1], track[key][3], track[key][4],
                        track[key][5], 0]
        nat_hashes.update(hashes['nat'])
        head = dict(head, input_fp=input_fp, facts=dict((k, facts[k]) for k in FACT_KEYS))
        _write_record(paths, head, dict(objrec, tables=tables, services=old))
    result['restores'] = backend.restores
    return result


DEFAULT_STATE_DIR = '/run/barepod/kube_svc_rules'


def shared_chains(prefix):
    """The chains kubelet shares with kube-proxy (only under kube-proxy's own prefix)."""
    return [('filter', 'KUBE-FIREWALL'), ('nat', 'KUBE-MARK-MASQ')] if prefix == 'KUBE' else []


def _created_shared(prefix, record, existing, token_found=None):
    """['table/chain'] of the shared chains this module created: from the record, else from
    the canary's token (which carries them from the first sync on), else - on a first sync -
    those that do not exist yet (this sync creates them)."""
    shared = shared_chains(prefix)
    if not shared:
        return []
    names = ['%s/%s' % tc for tc in shared]
    if record is not None and isinstance(record.get('created'), list):
        return [c for c in record['created'] if c in names]
    if token_found:
        _head, sep, tail = token_found.partition(' created=')
        return [c for c in tail.split(',') if c in names] if sep else []
    return ['%s/%s' % (t, c) for t, c in shared if c not in (existing.get(t).chains if existing.get(t) else ())]


def _record_paths(state_dir, proc_root, mode, prefix):
    """(head, body) of the sync record of this network namespace, backend and prefix."""
    st = os.stat(os.path.join(proc_root, 'self', 'ns', 'net'))
    base = os.path.join(state_dir, 'netns-%d-%d-%s-%s' % (st.st_dev, st.st_ino, mode, prefix))
    return base + '.json', base + '.body'


def _load_json(path):
    try:
        with open(path, 'r') as f:
            rec = json.load(f)
    except (IOError, OSError, ValueError):
        return None
    if not isinstance(rec, dict):
        return None
    return rec if rec.get('version') == RECORD_VERSION else None


def _load_body(path):
    """The record body: marshal (format 2) of a dict of strings, numbers and lists, several MB
    at 10,000 Services, which JSON would take five times as long to read and write. It is a
    cache in root's own state dir, trusted only when its id matches the head's; anything
    unreadable is no body (a full sync follows)."""
    try:
        with open(path, 'rb') as f:
            rec = marshal.loads(f.read())
    except (IOError, OSError, ValueError, EOFError, TypeError):
        return None
    return rec if isinstance(rec, dict) else None


def _write_record(paths, head, body):
    """The body first, the head (naming the body) last: a head is only ever found beside its body.

    Each file is replaced atomically (rename) but not fsynced: the record describes iptables
    rules, which do not survive a crash either, and a torn or stale record is never trusted
    (the canary token and the body id must match), so durability would buy nothing but time."""
    makedirs(os.path.dirname(paths[0]), 0o700)
    head = dict(head, body_id=uuid.uuid4().hex)
    body = dict(body, id=head['body_id'])
    atomic_write(paths[1], marshal.dumps(body, _MARSHAL_FORMAT), 0o600, fsync=False)
    atomic_write(paths[0], json.dumps(head, sort_keys=True, separators=(',', ':')).encode('utf-8'), 0o600,
                 fsync=False)


def _remove_record(paths):
    # (+ the JSON body that records of version 2 kept beside the head)
    for path in tuple(paths) + (paths[1] + '.json',):
        try:
            os.unlink(path)
        except OSError:
            pass


def _jumps_by_chain(jumps):
    out = {}
    for t, src, rule in jumps:
        out.setdefault(t, {}).setdefault(src, []).insert(0, rule)
    return out
