# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kube-proxy's model of Services and EndpointSlices: parsing and validating them as its
ServiceChangeTracker and EndpointSliceCache do, the node's proxier settings, and
pkg/proxy/topology.go CategorizeEndpoints.

load(objects, node_name) -> (sorted [ServicePort], {(service port name, protocol): [Endpoint]},
skipped): endpoints deduplicated by ip:port (a local one wins), sorted by "ip:port" as
kube-proxy sorts them, each with its SEP chain hash. IPv4 only; topology hints are not used.
Chain names follow kube-proxy: sha256(servicePortName + protocol [+ endpoint]) in base32, the
first 16 characters.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils._common import DNS1123_LABEL_RE

PROTOCOLS = ('TCP', 'UDP', 'SCTP')
_PROTOCOL_SET = frozenset(PROTOCOLS)
_LOWER = dict((p, p.lower()) for p in PROTOCOLS)
SERVICE_TYPES = ('ClusterIP', 'NodePort', 'LoadBalancer', 'ExternalName')
LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000
DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_AFFINITY_TIMEOUT = 86400
SERVICE_NAME_LABEL = 'kubernetes.io/service-name'
PREFIX_RE = re.compile(r'^[A-Z][A-Z0-9]{0,6}\Z')

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


# --------------------------------------------------------------------------- input

def _err(msg, field, value=None):
    return BarepodError(msg, field=field, value=value)


_OCTET = r'(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
_IPV4_RE = re.compile(r'^%s\.%s\.%s\.%s\Z' % (_OCTET, _OCTET, _OCTET, _OCTET))


class _V4(str):
    """A dotted-quad IPv4 address that passed the fast check (behaves like the string)."""
    __slots__ = ()
    version = 4


_SLOPPY_IPV4_RE = re.compile(r'^([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)\Z')


def parse_ipv4_sloppy(text):
    """k8s.io/utils/net ParseIPSloppy for a dotted quad: Go's ParseIP as it was before Go 1.17,
    which kube-proxy keeps for the addresses the API server once accepted. Each part is decimal
    (leading zeros allowed, and not octal: 010 is 10) and at most 255. -> the canonical
    address, or None."""
    m = _SLOPPY_IPV4_RE.match(text)
    if m is None:
        return None
    parts = [int(p) for p in m.groups()]
    if max(parts) > 255:
        return None
    return '%d.%d.%d.%d' % tuple(parts)


def _ipv4(field, value, warnings=None):
    """An IP address: a _V4 string for IPv4 (fast path), an ipaddress object otherwise.
    warnings: a list for an address of a Kubernetes object, which is read as kube-proxy reads
    it (ParseIPSloppy: leading zeros accepted, decimal), with a warning; None: strict."""
    if isinstance(value, str) and _IPV4_RE.match(value):
        return _V4(value)
    if not isinstance(value, str) or not value:
        raise _err('must be an IP address, got %r' % (value,), field, value)
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        sloppy = parse_ipv4_sloppy(value.strip()) if warnings is not None else None
        if sloppy is None:
            raise _err('%r is not a valid IP address' % (value,), field, value)
        warnings.append('%s: %r has leading zeros: read as %s, in decimal as kube-proxy reads it (ParseIPSloppy), '
                        'not in octal as iptables would' % (field, value, sloppy))
        return _V4(sloppy)
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


def parse_service(field, obj, skipped, warnings=None):
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
    ip = _ipv4(field + '.spec.clusterIP', cluster_ip, warnings)
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
        eip = _ipv4('%s.spec.externalIPs[%d]' % (field, i), e, warnings)
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
            vip = _ipv4('%s.status.loadBalancer.ingress[%d].ip' % (field, i), ing['ip'], warnings)
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


def parse_slice(field, obj, node_name, warnings=None):
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
            a = _ipv4('%s.endpoints[%d].addresses[0]' % (field, i), a, warnings)
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


def load(objects, node_name=None, warnings=None):
    """objects -> (sorted [ServicePort], {svc port name string: [Endpoint]}, skipped).
    warnings: a list that gets what was accepted only as kube-proxy accepts it."""
    if warnings is None:
        warnings = []
    services = {}
    slices = []
    skipped = []
    for field, obj in flatten_objects(objects):
        kind = obj.get('kind')
        if kind == 'Service':
            key, ports = parse_service(field, obj, skipped, warnings)
            if key in services:
                raise _err('Service %s is given twice' % key, field, key)
            services[key] = ports
        elif kind == 'EndpointSlice':
            slices.append(parse_slice(field, obj, node_name, warnings) + (field,))
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
