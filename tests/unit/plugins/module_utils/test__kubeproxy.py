"""Rendering of kube-proxy's iptables rules: golden dumps from kube-proxy's proxier_test.go,
then behaviour (traffic policies, endpoint conditions, affinity, protocols) and bad input."""
import copy
import json
import os

import pytest
import yaml

from ansible_collections.barepod.linux.plugins.module_utils import _kpmodel as kpm
from ansible_collections.barepod.linux.plugins.module_utils import _kprender as kpr
from ansible_collections.barepod.linux.plugins.module_utils import _kpsync as kps
from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'kubeproxy')


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


def fake_proxier_settings(**kw):
    """NewFakeProxier: node test-node (192.168.0.2), cluster CIDR detector 10.0.0.0/8,
    localhost NodePorts, no --random-fully."""
    args = dict(node_name='test-node', node_ip='192.168.0.2', cluster_cidr='10.0.0.0/8', random_fully=False)
    args.update(kw)
    return kpm.Settings(**args)


def golden_payload(objs, **kw):
    # The fake proxier hard-codes masqueradeMark "0x4000"; a real kube-proxy formats
    # 1<<14 with %#08x, which is "0x00004000" (and what we write). iptables reads both alike.
    return kpr.render(objs, fake_proxier_settings(**kw)).payload().replace('0x00004000', '0x4000')


def svc(ns, name, ip, ports, **spec):
    s = dict(apiVersion='v1', kind='Service', metadata=dict(namespace=ns, name=name),
             spec=dict(clusterIP=ip, ports=ports))
    status = spec.pop('status', None)
    s['spec'].update(spec)
    if status:
        s['status'] = status
    return s


def eps(ns, svcname, endpoints, ports, name=None):
    return dict(apiVersion='discovery.k8s.io/v1', kind='EndpointSlice',
                metadata=dict(namespace=ns, name=name or svcname + '-1',
                              labels={'kubernetes.io/service-name': svcname}),
                addressType='IPv4', endpoints=endpoints, ports=ports)


P80 = [dict(name='p80', port=80, protocol='TCP')]


def chain_rules(rs, table, chain):
    return [k for k, _s in rs.chains[table][chain]]


# ----------------------------------------------------------------------------- golden

def test_golden_overall_iptables_rules():
    """TestOverallIPTablesRules: ClusterIP, LoadBalancer with Local policy, NodePort, externalIPs,
    LoadBalancer with source ranges and ClientIP affinity, and a Service without endpoints."""
    objs = list(yaml.safe_load_all(fixture('overall.yaml')))
    assert golden_payload(objs, nfacct=True) == fixture('overall.expected')


def test_golden_sync_proxy_rules_repeated_first_sync():
    objs = list(yaml.safe_load_all(fixture('repeated.yaml')))
    assert golden_payload(objs) == fixture('repeated.expected')


def test_chain_names_of_the_repeated_test():
    # names kube-proxy's TestSyncProxyRulesRepeated expects after its later syncs
    assert kpm.port_proto_hash('ns3/svc3:p80', 'tcp') == 'X27LE4BHSL4DOUIK'
    assert kpm.endpoint_hash('ns3/svc3:p80', 'tcp', '10.0.3.1:80') == 'BSWRHOQ77KEXZLNL'
    assert kpm.endpoint_hash('ns3/svc3:p80', 'tcp', '10.0.3.2:80') == 'DKCFIS26GWF2WLWC'
    assert kpm.port_proto_hash('ns4/svc4:p80', 'tcp') == '4SW47YFZTEDKD3PK'
    assert kpm.endpoint_hash('ns4/svc4:p80', 'tcp', '10.0.4.1:80') == 'AYCN5HPXMIRJNJXU'


def test_no_endpoints_reject_line_of_the_repeated_test():
    objs = [svc('ns4', 'svc4', '172.30.0.44', P80, type='ClusterIP')]
    rs = kpr.render(objs, fake_proxier_settings())
    assert chain_rules(rs, 'filter', 'KUBE-SERVICES') == [
        '-m comment --comment "ns4/svc4:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j REJECT']
    assert rs.saved_rules('filter', 'KUBE-SERVICES') == [
        '-d 172.30.0.44/32 -p tcp -m comment --comment "ns4/svc4:p80 has no endpoints" -m tcp --dport 80 '
        '-j REJECT --reject-with icmp-port-unreachable']
    assert not [c for c in rs.chains['nat'] if '-SVC-' in c or '-SEP-' in c]


# ----------------------------------------------------------------------------- behaviour

def test_probabilities_for_three_endpoints():
    objs = [svc('ns', 's', '10.96.0.10', P80),
            eps('ns', 's', [dict(addresses=['10.1.0.%d' % i]) for i in (3, 1, 2)], P80)]
    rs = kpr.render(objs, kpm.Settings())
    chain = 'KUBE-SVC-' + kpm.port_proto_hash('ns/s:p80', 'tcp')
    rules = chain_rules(rs, 'nat', chain)
    # no cluster CIDR: no masquerade rule, just the three endpoint rules in ip:port order
    assert [r.split('"')[1] for r in rules] == [
        'ns/s:p80 -> 10.1.0.1:80', 'ns/s:p80 -> 10.1.0.2:80', 'ns/s:p80 -> 10.1.0.3:80']
    assert '--probability 0.3333333333 ' in rules[0]
    assert '--probability 0.5000000000 ' in rules[1]
    assert 'statistic' not in rules[2]
    saved = rs.saved_rules('nat', chain)
    assert '--probability 0.33333333349 ' in saved[0]
    assert '--probability 0.50000000000 ' in saved[1]


def test_compute_probability_matches_go_format():
    assert kpr.compute_probability(7) == '0.1428571429'
    assert kpr.saved_probability('0.5000000000') == '0.50000000000'


def test_multiple_ports_and_protocols():
    ports = [dict(name='http', port=80, protocol='TCP'), dict(name='dns-udp', port=53, protocol='UDP'),
             dict(name='dns-tcp', port=53, protocol='TCP', targetPort=5353),
             dict(name='dns-sctp', port=53, protocol='SCTP')]
    eports = [dict(name='http', port=80, protocol='TCP'), dict(name='dns-udp', port=53, protocol='UDP'),
              dict(name='dns-tcp', port=5353, protocol='TCP'), dict(name='dns-sctp', port=53, protocol='SCTP')]
    objs = [svc('ns2', 'svc2', '172.30.0.42', ports),
            eps('ns2', 'svc2', [dict(addresses=['10.180.0.1']), dict(addresses=['10.180.2.1'])], eports)]
    rs = kpr.render(objs, fake_proxier_settings())
    services = chain_rules(rs, 'nat', 'KUBE-SERVICES')
    assert len(services) == 5  # four ports + the nodeports tail rule
    assert any('-m udp -p udp -d 172.30.0.42 --dport 53' in r for r in services)
    assert any('-m sctp -p sctp -d 172.30.0.42 --dport 53' in r for r in services)
    assert services[-1].startswith('-m comment --comment "kubernetes service nodeports')
    # UDP and TCP on the same port name differ by protocol in the hash
    sep_tcp = 'KUBE-SEP-' + kpm.endpoint_hash('ns2/svc2:dns-tcp', 'tcp', '10.180.0.1:5353')
    assert chain_rules(rs, 'nat', sep_tcp)[1].endswith('-m tcp -p tcp -j DNAT --to-destination 10.180.0.1:5353')
    sep_udp = 'KUBE-SEP-' + kpm.endpoint_hash('ns2/svc2:dns-udp', 'udp', '10.180.0.1:53')
    assert chain_rules(rs, 'nat', sep_udp)[1].endswith('-m udp -p udp -j DNAT --to-destination 10.180.0.1:53')


def test_unnamed_single_port_uses_plain_service_name():
    objs = [svc('kube-system', 'dns', '10.96.0.10', [dict(port=53, protocol='UDP')]),
            eps('kube-system', 'dns', [dict(addresses=['10.244.0.5'])], [dict(port=53, protocol='UDP')])]
    rs = kpr.render(objs, kpm.Settings())
    assert '"kube-system/dns cluster IP"' in chain_rules(rs, 'nat', 'KUBE-SERVICES')[0]


def test_endpoint_conditions_ready_then_serving_terminating():
    def render(endpoints):
        rs = kpr.render([svc('ns', 's', '10.96.0.1', P80), eps('ns', 's', endpoints, P80)], kpm.Settings())
        chain = 'KUBE-SVC-' + kpm.port_proto_hash('ns/s:p80', 'tcp')
        return [r.split('-> ')[1].split('"')[0] for r in chain_rules(rs, 'nat', chain)] if chain in rs.chains['nat'] \
            else chain_rules(rs, 'filter', 'KUBE-SERVICES')

    ready = dict(addresses=['10.0.0.1'], conditions=dict(ready=True))
    term = dict(addresses=['10.0.0.2'], conditions=dict(ready=False, serving=True, terminating=True))
    dead = dict(addresses=['10.0.0.3'], conditions=dict(ready=False, serving=False, terminating=True))
    notready = dict(addresses=['10.0.0.4'], conditions=dict(ready=False))
    assert render([ready, term, dead]) == ['10.0.0.1:80']
    assert render([term, dead]) == ['10.0.0.2:80']  # fall back to serving+terminating
    rej = render([dead, notready])
    assert len(rej) == 1 and 'has no endpoints' in rej[0] and rej[0].endswith('-j REJECT')


def test_duplicate_endpoints_across_slices_deduplicated():
    objs = [svc('ns', 's', '10.96.0.1', P80),
            eps('ns', 's', [dict(addresses=['10.0.0.1'])], P80, name='a'),
            eps('ns', 's', [dict(addresses=['10.0.0.1']), dict(addresses=['10.0.0.2'])], P80, name='b')]
    rs = kpr.render(objs, kpm.Settings())
    assert rs.endpoints == 2


def test_internal_traffic_policy_local_without_local_endpoints_drops():
    objs = [svc('ns', 's', '10.96.0.1', P80, internalTrafficPolicy='Local'),
            eps('ns', 's', [dict(addresses=['10.0.0.1'], nodeName='other')], P80)]
    rs = kpr.render(objs, kpm.Settings(node_name='me'))
    assert chain_rules(rs, 'filter', 'KUBE-SERVICES') == [
        '-m comment --comment "ns/s:p80 has no local endpoints" -m tcp -p tcp -d 10.96.0.1 --dport 80 -j DROP']
    rs = kpr.render(objs, kpm.Settings(node_name='other'))
    svl = 'KUBE-SVL-' + kpm.port_proto_hash('ns/s:p80', 'tcp')
    assert chain_rules(rs, 'nat', 'KUBE-SERVICES')[0].endswith('-j ' + svl)


def test_external_traffic_policy_local_nodeport_uses_svl():
    ports = [dict(name='p80', port=80, protocol='TCP', nodePort=30080)]
    objs = [svc('ns', 's', '10.96.0.1', ports, type='NodePort', externalTrafficPolicy='Local'),
            eps('ns', 's', [dict(addresses=['10.0.0.1'], nodeName='me'), dict(addresses=['10.0.0.2'])], P80)]
    rs = kpr.render(objs, kpm.Settings(node_name='me', cluster_cidr='10.0.0.0/16'))
    h = kpm.port_proto_hash('ns/s:p80', 'tcp')
    ext = chain_rules(rs, 'nat', 'KUBE-EXT-' + h)
    assert ext[-1] == '-j KUBE-SVL-' + h
    assert ext[0] == ('-m comment --comment "pod traffic for ns/s:p80 external destinations" -s 10.0.0.0/16 '
                      '-j KUBE-SVC-' + h)
    svl = chain_rules(rs, 'nat', 'KUBE-SVL-' + h)
    assert len(svl) == 1 and '10.0.0.1:80' in svl[0]
    assert len(chain_rules(rs, 'nat', 'KUBE-SVC-' + h)) == 3  # masquerade + two endpoints
    assert chain_rules(rs, 'nat', 'KUBE-NODEPORTS') == [
        '-m comment --comment ns/s:p80 -m tcp -p tcp --dport 30080 -j KUBE-EXT-' + h]


def test_session_affinity_timeout_and_recent_rules():
    objs = [svc('ns', 's', '10.96.0.1', P80, sessionAffinity='ClientIP',
                sessionAffinityConfig=dict(clientIP=dict(timeoutSeconds=30))),
            eps('ns', 's', [dict(addresses=['10.0.0.1']), dict(addresses=['10.0.0.2'])], P80)]
    rs = kpr.render(objs, kpm.Settings())
    h = kpm.port_proto_hash('ns/s:p80', 'tcp')
    rules = chain_rules(rs, 'nat', 'KUBE-SVC-' + h)
    sep1 = 'KUBE-SEP-' + kpm.endpoint_hash('ns/s:p80', 'tcp', '10.0.0.1:80')
    assert rules[0] == ('-m comment --comment "ns/s:p80 -> 10.0.0.1:80" -m recent --name %s --rcheck '
                        '--seconds 30 --reap -j %s' % (sep1, sep1))
    assert len(rules) == 4
    assert chain_rules(rs, 'nat', sep1)[1] == (
        '-m comment --comment ns/s:p80 -m recent --name %s --set -m tcp -p tcp -j DNAT '
        '--to-destination 10.0.0.1:80' % sep1)


def test_masquerade_all_and_mark_bit():
    objs = [svc('ns', 's', '10.96.0.1', P80), eps('ns', 's', [dict(addresses=['10.0.0.1'])], P80)]
    rs = kpr.render(objs, kpm.Settings(masquerade_all=True, masquerade_bit=3))
    h = kpm.port_proto_hash('ns/s:p80', 'tcp')
    assert chain_rules(rs, 'nat', 'KUBE-SVC-' + h)[0].endswith('--dport 80 -j KUBE-MARK-MASQ')
    assert chain_rules(rs, 'nat', 'KUBE-MARK-MASQ') == ['-j MARK --or-mark 0x00000008']
    assert rs.saved_rules('nat', 'KUBE-MARK-MASQ') == ['-j MARK --set-xmark 0x8/0x8']
    assert chain_rules(rs, 'nat', 'KUBE-POSTROUTING')[-1].endswith('-j MASQUERADE --random-fully')


def test_localhost_nodeports_off_and_nodeport_addresses():
    rs = kpr.render([], kpm.Settings(localhost_nodeports=False))
    assert chain_rules(rs, 'nat', 'KUBE-SERVICES')[-1].endswith(
        '-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS')
    assert 'KUBE-FIREWALL' not in rs.chains['filter']
    rs = kpr.render([], kpm.Settings(nodeport_addresses=['192.168.0.0/24'],
                                   nodeport_ips=['192.168.0.2', '10.1.1.1', '127.0.0.1']))
    assert chain_rules(rs, 'nat', 'KUBE-SERVICES') == [
        '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" '
        '-d 192.168.0.2 -j KUBE-NODEPORTS']
    assert 'KUBE-FIREWALL' not in rs.chains['filter']  # loopback not among the nodeport addresses


def test_large_cluster_mode_drops_endpoint_comments():
    objs = [svc('ns', 's', '10.96.0.1', P80),
            eps('ns', 's', [dict(addresses=['10.%d.%d.1' % (i // 250, i % 250)]) for i in range(1001)], P80)]
    rs = kpr.render(objs, kpm.Settings())
    assert rs.large_cluster_mode
    sep = [c for c in rs.chains['nat'] if c.startswith('KUBE-SEP-')][0]
    assert 'comment' not in ' '.join(chain_rules(rs, 'nat', sep))
    assert 'comment' not in ' '.join(rs.saved_rules('nat', sep))


def test_chain_prefix_renames_every_chain_and_jump():
    objs = list(yaml.safe_load_all(fixture('overall.yaml')))
    rs = kpr.render(objs, fake_proxier_settings(chain_prefix='BPOD'))
    text = rs.payload()
    assert 'KUBE-' not in text
    assert all(c.startswith('BPOD-') for t in kpr.TABLES for c in rs.chains[t])
    assert all(j[3].rsplit('-j ', 1)[1].startswith('BPOD-') for j in rs.jumps)
    # the hash does not depend on the prefix
    assert 'BPOD-SVC-XPGD46QRK7WJZT7O' in rs.chains['nat']


def test_headless_externalname_and_endpoints_are_skipped():
    external = dict(kind='Service', metadata=dict(name='x'), spec=dict(type='ExternalName', externalName='example.com'))
    objs = [svc('ns', 'h', 'None', P80), external, dict(kind='Endpoints', metadata=dict(name='h'))]
    rs = kpr.render(objs, kpm.Settings())
    assert rs.services == 0
    assert len(rs.skipped) == 3


def test_list_objects_are_expanded():
    objs = [dict(kind='List', items=[svc('ns', 's', '10.96.0.1', P80)])]
    assert kpr.render(objs, kpm.Settings()).services == 1


def test_jump_rules_match_kube_proxy_order():
    rs = kpr.render([], kpm.Settings())
    assert [(t, src, kpr.rsplit('-j ', 1)[1]) for t, src, kpr, _s in rs.jumps][:3] == [
        ('filter', 'INPUT', 'KUBE-EXTERNAL-SERVICES'), ('filter', 'FORWARD', 'KUBE-EXTERNAL-SERVICES'),
        ('filter', 'INPUT', 'KUBE-NODEPORTS')]
    assert ('nat', 'PREROUTING', '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
            '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES') in rs.jumps


# ----------------------------------------------------------------------------- bad input

BASE = svc('ns', 's', '10.96.0.1', P80)


def bad(mutate):
    s = copy.deepcopy(BASE)
    mutate(s)
    return s


@pytest.mark.parametrize('obj,field', [
    (bad(lambda s: s['spec'].pop('clusterIP')), 'objects[0].spec.clusterIP'),
    (bad(lambda s: s['spec'].update(clusterIP='')), 'objects[0].spec.clusterIP'),
    (bad(lambda s: s['spec'].update(clusterIP='10.96.0.300')), 'objects[0].spec.clusterIP'),
    (bad(lambda s: s['spec'].update(clusterIP='banana')), 'objects[0].spec.clusterIP'),
    (bad(lambda s: s['spec']['ports'][0].update(port=0)), 'objects[0].spec.ports[0].port'),
    (bad(lambda s: s['spec']['ports'][0].update(port=70000)), 'objects[0].spec.ports[0].port'),
    (bad(lambda s: s['spec']['ports'][0].update(port='http')), 'objects[0].spec.ports[0].port'),
    (bad(lambda s: s['spec']['ports'][0].update(nodePort=65536)), 'objects[0].spec.ports[0].nodePort'),
    (bad(lambda s: s['spec']['ports'][0].update(protocol='ICMP')), 'objects[0].spec.ports[0].protocol'),
    (bad(lambda s: s['spec']['ports'][0].update(protocol='tcp')), 'objects[0].spec.ports[0].protocol'),
    (bad(lambda s: s['spec'].update(ports=[])), 'objects[0].spec.ports'),
    (bad(lambda s: s['spec'].update(type='Weird')), 'objects[0].spec.type'),
    (bad(lambda s: s['spec'].update(sessionAffinity='Cookie')), 'objects[0].spec.sessionAffinity'),
    (bad(lambda s: s['spec'].update(externalTrafficPolicy='Nearby')), 'objects[0].spec.externalTrafficPolicy'),
    (bad(lambda s: s['spec'].update(loadBalancerSourceRanges=['10.0.0.0/33'])),
     'objects[0].spec.loadBalancerSourceRanges[0]'),
    (bad(lambda s: s['metadata'].pop('name')), 'objects[0].metadata.name'),
    (bad(lambda s: s.pop('spec')), 'objects[0].spec'),
    (bad(lambda s: s.update(kind='Pod')), 'objects[0].kind'),
])
def test_bad_service_names_field(obj, field):
    with pytest.raises(BarepodError) as e:
        kpr.render([obj], kpm.Settings())
    assert e.value.field == field
    assert field in str(e.value)


def test_endpointslice_naming_missing_service():
    with pytest.raises(BarepodError) as e:
        kpr.render([BASE, eps('ns', 'ghost', [dict(addresses=['10.0.0.1'])], P80)], kpm.Settings())
    assert 'ns/ghost' in str(e.value)
    assert e.value.field == 'objects[1].metadata.labels.kubernetes.io/service-name'


def test_endpointslice_without_service_label():
    s = eps('ns', 's', [], P80)
    s['metadata']['labels'] = {}
    with pytest.raises(BarepodError, match='kubernetes.io/service-name'):
        kpr.render([BASE, s], kpm.Settings())


def test_endpoint_with_bad_address_and_port():
    with pytest.raises(BarepodError, match=r'objects\[1\]\.endpoints\[0\]\.addresses\[0\]'):
        kpr.render([BASE, eps('ns', 's', [dict(addresses=['10.0.0.999'])], P80)], kpm.Settings())
    with pytest.raises(BarepodError, match=r'objects\[1\]\.ports\[0\]\.port'):
        kpr.render([BASE, eps('ns', 's', [], [dict(name='p80', port=99999)])], kpm.Settings())


@pytest.mark.parametrize('text,want', [
    # k8s.io/utils/net ParseIPSloppy (Go's ParseIP before 1.17, kept for stored objects): each
    # part decimal, leading zeros allowed and not octal, at most 255 (its ip_test.go cases)
    ('127.001.002.003', '127.1.2.3'), ('127.007.008.009', '127.7.8.9'), ('127.010.020.030', '127.10.20.30'),
    ('172.30.0.041', '172.30.0.41'), ('0000000010.0.0.1', '10.0.0.1'), ('10.0.0.1', '10.0.0.1'),
    ('127.0.0.256', None), ('127.0.0.0256', None), ('-0.0.0.0', None), ('0.-1.0.0', None), ('1.2.3', None),
    ('1.2.3.4.5', None), ('1.2.3.', None), ('abc', None), ('', None), ('1.2.3.4\n', None), ('1.2.3.0x4', None),
    ('1.2.3.\u0664', None), ('1_0.0.0.1', None),
])
def test_parse_ipv4_sloppy_reads_leading_zeros_as_decimal(text, want):
    assert kpm.parse_ipv4_sloppy(text) == want


def test_leading_zero_addresses_are_read_as_kube_proxy_reads_them_with_a_warning():
    """kube-proxy's TestBadIPs: addresses the API server accepted before Go 1.17 (leading
    zeros) are proxied as their decimal reading, not rejected; the module says so."""
    lb = dict(loadBalancer=dict(ingress=[dict(ip='001.002.003.004')]))
    sloppy = [svc('ns', 's', '172.30.0.041', [dict(name='p80', port=80, nodePort=30080)], type='LoadBalancer',
                  externalIPs=['192.168.099.011'], status=lb),
              eps('ns', 's', [dict(addresses=['10.180.00.001'])], P80)]
    clean = [svc('ns', 's', '172.30.0.41', [dict(name='p80', port=80, nodePort=30080)], type='LoadBalancer',
                 externalIPs=['192.168.99.11'], status=dict(loadBalancer=dict(ingress=[dict(ip='1.2.3.4')]))),
             eps('ns', 's', [dict(addresses=['10.180.0.1'])], P80)]
    res = kps.sync_service_rules(dict(objects=sloppy, apply=False, return_payload=True))
    assert res['payload'] == kpr.render(clean, kpm.Settings()).payload()
    assert '172.30.0.41' in res['payload'] and '10.180.0.1:80' in res['payload']
    fields = ['objects[0].spec.clusterIP', 'objects[0].spec.externalIPs[0]',
              'objects[0].status.loadBalancer.ingress[0].ip', 'objects[1].endpoints[0].addresses[0]']
    assert len(res['warnings']) == len(fields)
    for field, w in zip(fields, res['warnings'], strict=True):
        assert w.startswith(field + ': ') and 'leading zeros' in w
    assert "'172.30.0.041'" in res['warnings'][0] and '172.30.0.41' in res['warnings'][0]
    # the node's own flags stay strict (they are not stored API objects)
    with pytest.raises(BarepodError) as e:
        kpm.Settings(node_ip='192.168.000.2')
    assert e.value.field == 'node_ip'
    # and what is not even a sloppy address still names its field
    with pytest.raises(BarepodError) as e:
        kpr.render([svc('ns', 's', '172.30.0.0256', P80)], kpm.Settings())
    assert e.value.field == 'objects[0].spec.clusterIP'


@pytest.mark.parametrize('kw,field', [
    (dict(chain_prefix='kube'), 'chain_prefix'), (dict(chain_prefix='TOOLONGX'), 'chain_prefix'),
    (dict(chain_prefix='KUBE-'), 'chain_prefix'), (dict(masquerade_bit=32), 'masquerade_bit'),
    (dict(cluster_cidr='10.0.0.0/99'), 'cluster_cidr'), (dict(node_ip='x'), 'node_ip'),
    (dict(nodeport_addresses=['nope']), 'nodeport_addresses[0]'),
])
def test_bad_settings(kw, field):
    with pytest.raises(BarepodError) as e:
        kpm.Settings(**kw)
    assert e.value.field == field


def test_duplicate_service_rejected():
    with pytest.raises(BarepodError, match='given twice'):
        kpr.render([BASE, BASE], kpm.Settings())


def test_offline_module_manager_renders_without_iptables():
    res = kps.sync_service_rules(dict(objects=list(yaml.safe_load_all(fixture('repeated.yaml'))), apply=False,
                                     cluster_cidr='10.0.0.0/8', random_fully=False, conntrack_tcp_be_liberal=False))
    assert res['changed'] is False
    assert res['payload'].replace('0x00004000', '0x4000') == fixture('repeated.expected')
    assert 'nat/KUBE-SVC-XPGD46QRK7WJZT7O' in res['chains']['desired']
    assert res['services'] == 2


def test_src_files_and_yaml_errors(tmp_path):
    p = tmp_path / 'objs.yaml'
    p.write_text(fixture('repeated.yaml'))
    res = kps.sync_service_rules(dict(src=[str(p)], apply=False), yaml_mod=yaml)
    assert res['services'] == 2
    bad_yaml = tmp_path / 'bad.yaml'
    bad_yaml.write_text('kind: [unclosed\n')
    with pytest.raises(BarepodError, match=r'src\[0\]'):
        kps.sync_service_rules(dict(src=[str(bad_yaml)], apply=False), yaml_mod=yaml)
    with pytest.raises(BarepodError, match=r'src\[0\]'):
        kps.sync_service_rules(dict(src=[str(tmp_path / 'missing.yaml')], apply=False), yaml_mod=yaml)


def test_chapter_kube_dns_example_reproduces_the_books_rules():
    """examples/kube-dns-service.yaml gives the chain names and rules printed in the chapter
    (3.5.3): KUBE-SVC-ERIFXISQEP7F7OF4 -> KUBE-SEP-IT2ZTR26TO4XFPTO with probability 0.5."""
    here = os.path.dirname(__file__)
    path = os.path.join(here, '..', '..', '..', '..', 'examples', 'kube-dns-service.yaml')
    with open(path) as f:
        objs = list(yaml.safe_load_all(f))
    rs = kpr.render(objs, kpm.Settings(node_name='kind-control-plane', cluster_cidr='10.244.0.0/16'))
    assert rs.services == 3 and rs.endpoints == 6
    assert rs.saved_rules('nat', 'KUBE-SEP-IT2ZTR26TO4XFPTO') == [
        '-s 10.244.0.2/32 -m comment --comment "kube-system/kube-dns:dns-tcp" -j KUBE-MARK-MASQ',
        '-p tcp -m comment --comment "kube-system/kube-dns:dns-tcp" -m tcp -j DNAT --to-destination 10.244.0.2:53']
    svc = rs.saved_rules('nat', 'KUBE-SVC-ERIFXISQEP7F7OF4')
    assert svc[1] == ('-m comment --comment "kube-system/kube-dns:dns-tcp -> 10.244.0.2:53" -m statistic '
                      '--mode random --probability 0.50000000000 -j KUBE-SEP-IT2ZTR26TO4XFPTO')
    assert 'KUBE-SVC-TCOU7JCQXEZGVUNU' in rs.chains['nat']  # kube-dns:dns over UDP


def test_src_json_and_yaml_give_the_same_objects(tmp_path):
    objs = list(yaml.safe_load_all(fixture('repeated.yaml')))
    j = tmp_path / 'objs.json'
    j.write_text(json.dumps(dict(kind='List', items=objs)))
    y = tmp_path / 'objs.yaml'
    y.write_text(fixture('repeated.yaml'))
    a = kps.sync_service_rules(dict(src=[str(j)], apply=False), yaml_mod=yaml)
    b = kps.sync_service_rules(dict(src=[str(y)], apply=False), yaml_mod=yaml)
    assert a['payload'] == b['payload'] and a['services'] == 2


def test_group_by_service_fingerprints_each_service_with_its_slices():
    objs = list(yaml.safe_load_all(fixture('repeated.yaml')))
    fps, members = kps.group_by_service(objs, kps.object_digests(objs))
    assert sorted(fps) == sorted(members) and len(fps) == 2
    for group in members.values():
        assert group[0]['kind'] == 'Service'
        assert all(o['kind'] == 'EndpointSlice' for o in group[1:])
    changed = copy.deepcopy(objs)
    sl = next(o for o in changed if o['kind'] == 'EndpointSlice')
    sl['endpoints'][0]['addresses'] = ['10.180.0.99']
    fps2, _m = kps.group_by_service(changed, kps.object_digests(changed))
    key = '%s/%s' % (sl['metadata']['namespace'], sl['metadata']['labels'][kpm.SERVICE_NAME_LABEL])
    assert [k for k in fps if fps[k] != fps2[k]] == [key]
    # anything but plain Services and EndpointSlices of given Services: only the full render
    for extra in (dict(kind='List', items=[]), dict(kind='Endpoints', metadata=dict(name='x')), 'x',
                  dict(kind='EndpointSlice', metadata=dict(name='s', labels={kpm.SERVICE_NAME_LABEL: 'none'}))):
        more = objs + [extra]
        assert kps.group_by_service(more, kps.object_digests(more)) == (None, None)
    assert kps.group_by_service(objs + objs[:1], kps.object_digests(objs + objs[:1])) == (None, None)


def test_object_encodings_depend_on_values_only():
    """The per-object encoding behind the fingerprints: equal values give equal bytes whatever
    the sharing of strings between objects (marshal format 3+ would emit back-references that
    depend on reference counts), different values - even 1 vs True vs "1" - different bytes,
    and YAML timestamps (which marshal refuses) still encode."""
    import datetime
    objs = list(yaml.safe_load_all(fixture('repeated.yaml')))
    shared = 'x' * 20
    a = [dict(kind='Service', metadata=dict(name=shared, namespace=shared))]
    b = [dict(kind='Service', metadata=dict(name='x' * 20, namespace=''.join(['x'] * 20)))]
    assert kps.object_digests(a) == kps.object_digests(b)
    assert kps.object_digests(objs) == kps.object_digests(json.loads(json.dumps(objs)))
    variants = [dict(v=1), dict(v=True), dict(v='1'), dict(v=1.0), dict(v=[1]), dict(w=1)]
    enc = kps.object_digests(variants)
    assert len(set(enc)) == len(variants)
    ts = [dict(kind='Service', metadata=dict(creationTimestamp=datetime.datetime(2024, 1, 2)))]
    enc1 = kps.object_digests(objs + ts)
    assert enc1 == kps.object_digests(copy.deepcopy(objs + ts)) and enc1[-1] != enc1[0]
    ts2 = [dict(kind='Service', metadata=dict(creationTimestamp=datetime.datetime(2024, 1, 3)))]
    assert kps.object_digests(objs + ts2)[-1] != enc1[-1]


def test_tracked_contributions_add_up_to_the_full_render():
    """What _render tracks per Service (rules it adds to the shared chains and its own chains)
    adds up to the whole rule set, and a Service rendered alone tracks the same."""
    objs = yaml.safe_load_all(fixture('overall.yaml'))
    objs = list(objs)
    track = {}
    rs = kpr.render(objs, fake_proxier_settings(), track=track)
    counts = rs.rule_count()
    fixed = kpr.render([], fake_proxier_settings()).rule_count()
    assert sum(t.filter_rules for t in track.values()) == counts['filter'] - fixed['filter']
    assert sum(t.nat_rules for t in track.values()) == counts['nat'] - fixed['nat']
    own = set(c for t in track.values() for c in t.chains)
    assert own == set(c for c in rs.chains['nat'] if kpr.is_service_chain('KUBE', c))
    assert sum(t.ports for t in track.values()) == rs.services
    fps, members = kps.group_by_service(objs, kps.object_digests(objs))
    for key, group in members.items():
        alone = {}
        kpr.render(group, fake_proxier_settings(), track=alone)
        if key in track:
            assert (alone[key].contrib, alone[key].chains) == (track[key].contrib, track[key].chains), key


class FakeBackend(object):
    """iptables as far as the record paths need it: the canary token of the last restore."""

    mode, reason = 'nft', 'fake'

    def __init__(self):
        self.restores = 0
        self.payloads = []
        self.token = None

    def list_chain(self, table, chain):
        return '-A %s -m comment --comment "%s"\n' % (chain, self.token) if self.token else ''

    def save(self, table=None):
        return ''

    def start_save(self):
        return FakeProc()

    def collect_save(self, proc):
        return self.save()

    def stream(self):
        return FakeStream(self)

    def restore(self, payload):
        self.restores += 1
        self.payloads.append(payload)
        found = None
        if 'PROXY-CANARY -m comment --comment "' in payload:
            found = payload.split('PROXY-CANARY -m comment --comment "', 1)[1].split('"', 1)[0]
        self.token = found or self.token


class FakeProc(object):
    def kill(self):
        pass

    def communicate(self):
        return '', ''


class FakeStream(object):
    """A streamed restore that hands its whole text to the fake backend when finished."""

    def __init__(self, backend):
        self.backend, self.parts, self.done = backend, [], False

    def write(self, text):
        assert not self.done
        self.parts.append(text)

    def flush(self):
        pass

    def text(self):
        return ''.join(self.parts)

    def finish(self):
        if not self.done:
            self.done = True
            self.backend.restore(self.text())

    def abort(self):
        self.done = True


class NoYaml(object):
    class YAMLError(Exception):
        pass

    SafeLoader = None

    @staticmethod
    def load_all(*_a, **_k):
        raise AssertionError('an unchanged src file must not be parsed')


def services_with_slices(n, moved=None):
    """n ClusterIP Services with one EndpointSlice of two endpoints each; Service `moved` gets
    a new second endpoint."""
    out = []
    for i in range(n):
        out.append(svc('ns', 's%d' % i, '172.30.0.%d' % (i + 1), [dict(name='p', port=80)]))
        ips = ['10.180.0.%d' % (2 * i), '10.180.0.%d' % (2 * i + 1)]
        if moved == i:
            ips[1] = '10.180.1.1'
        out.append(dict(kind='EndpointSlice', addressType='IPv4',
                        metadata=dict(namespace='ns', name='s%d-x' % i,
                                      labels={kpm.SERVICE_NAME_LABEL: 's%d' % i}),
                        endpoints=[dict(addresses=[a]) for a in ips], ports=[dict(name='p', port=8080)]))
    return out


def test_unchanged_src_is_not_parsed_and_one_service_is_rendered_alone(tmp_path):
    def objs(moved=False):
        return services_with_slices(5, moved=3 if moved else None)
    src = tmp_path / 'objs.yaml'
    src.write_text(yaml.safe_dump_all(objs()))
    fake = FakeBackend()
    params = dict(src=[str(src)], return_payload=False, state_dir=str(tmp_path / 'state'),
                  conntrack_tcp_be_liberal=False, cluster_cidr='10.0.0.0/8')
    r = kps.sync_service_rules(params, yaml_mod=yaml, backend=fake)
    assert r['changed'] and r['render'] == 'full' and fake.restores == 1 and fake.token
    r = kps.sync_service_rules(params, yaml_mod=NoYaml, backend=fake)
    assert not r['changed'] and r['render'] == 'none' and fake.restores == 1
    assert (r['services'], r['endpoints']) == (5, 10)
    src.write_text(yaml.safe_dump_all(objs(moved=True)))
    r = kps.sync_service_rules(params, yaml_mod=yaml, backend=fake)
    assert r['changed'] and r['render'] == 'partial (1 of 5 Services)' and fake.restores == 2
    ch = r['chains']
    assert len(ch['changed']) == 1 and len(ch['added']) == 1 and len(ch['removed']) == 1
    assert fake.payloads[-1].startswith('*nat\n') and '10.180.1.1' in fake.payloads[-1]
    assert 'KUBE-SERVICES' not in fake.payloads[-1] and fake.payloads[-1].count('COMMIT') == 1
    # check mode on the next change plans the same way and writes nothing
    src.write_text(yaml.safe_dump_all(objs()))
    r = kps.sync_service_rules(params, check_mode=True, yaml_mod=yaml, backend=fake)
    assert r['changed'] and r['render'].startswith('partial') and fake.restores == 2
    # what the record now says equals a from-scratch render of the moved objects
    # (the same objects with their keys in another order: re-rendered, nothing changes)
    r = kps.sync_service_rules(dict(params, src=[], objects=objs(moved=True)), backend=fake)
    assert not r['changed'] and r['render'] == 'partial (5 of 5 Services)' and fake.restores == 2
    full = kpr.render(objs(moved=True), kpm.Settings(cluster_cidr='10.0.0.0/8'))
    assert (r['services'], r['endpoints'], r['rules']) == (full.services, full.endpoints, full.rule_count())


def test_changed_by_object_finds_the_changed_services_like_group_by_service():
    """The record's per-object fingerprints name the changed Services without grouping the
    input; the fingerprints and members must be exactly those group_by_service gives, and any
    change of shape (another count, another kind or Service at a place) defers to it."""
    objs = list(yaml.safe_load_all(fixture('overall.yaml')))
    # slices before their Services: members still come Service first
    objs = [o for o in objs if o['kind'] == 'EndpointSlice'] + [o for o in objs if o['kind'] == 'Service']
    keys = []
    fps, members = kps.group_by_service(objs, kps.object_digests(objs), keys=keys)
    assert fps is not None and len(keys) == len(objs)
    body = kps.object_record(objs, kps.object_digests(objs), keys)
    same = kps.changed_by_object(objs, kps.object_digests(objs), body)
    assert same[0] == {} and same[1] == {}
    changed = copy.deepcopy(objs)
    sl = changed[0]
    sl['endpoints'][0]['addresses'] = ['10.180.0.99']
    key = '%s/%s' % (sl['metadata']['namespace'], sl['metadata']['labels'][kpm.SERVICE_NAME_LABEL])
    d2 = kps.object_digests(changed)
    hit = kps.changed_by_object(changed, d2, body)
    fps2, members2 = kps.group_by_service(changed, d2)
    assert hit is not None and list(hit[0]) == [key]
    assert hit[0][key] == fps2[key] != fps[key]
    assert hit[1][key] == members2[key] and hit[1][key][0]['kind'] == 'Service'
    assert hit[2]['objects'] == kps.object_record(changed, d2, keys)['objects']
    # a slice relabelled to another Service, one object more or less, kinds swapped: None
    moved = copy.deepcopy(objs)
    other = next(o for o in moved if o['kind'] == 'Service' and o['metadata']['name'] != key.split('/')[1])
    moved[0]['metadata']['labels'][kpm.SERVICE_NAME_LABEL] = other['metadata']['name']
    moved[0]['metadata']['namespace'] = other['metadata'].get('namespace')
    assert kps.changed_by_object(moved, kps.object_digests(moved), body) is None
    assert kps.changed_by_object(objs[:-1], kps.object_digests(objs[:-1]), body) is None
    swapped = objs[:]
    i = next(j for j, o in enumerate(swapped) if o['kind'] == 'Service')
    swapped[0], swapped[i] = swapped[i], swapped[0]
    assert kps.changed_by_object(swapped, kps.object_digests(swapped), body) is None
    assert kps.changed_by_object(objs, kps.object_digests(objs), {}) is None


def test_partial_sync_through_either_path_leaves_the_same_record(tmp_path):
    """A change found object by object and the same change found by grouping (the input
    reordered, so the per-object record does not apply) give the same rules and a record that
    serves the next run."""
    def objs(moved=False):
        return services_with_slices(4, moved=2 if moved else None)
    results = []
    for order in (lambda x: x, lambda x: list(reversed(x))):
        fake = FakeBackend()
        params = dict(return_payload=False, state_dir=str(tmp_path / str(len(results))),
                      conntrack_tcp_be_liberal=False, cluster_cidr='10.0.0.0/8')
        assert kps.sync_service_rules(dict(params, objects=objs()), backend=fake)['render'] == 'full'
        r = kps.sync_service_rules(dict(params, objects=order(objs(moved=True))), backend=fake)
        assert r['changed'] and r['render'] == 'partial (1 of 4 Services)' and fake.restores == 2
        again = kps.sync_service_rules(dict(params, objects=order(objs(moved=True))), backend=fake)
        assert not again['changed'] and again['render'] == 'none' and fake.restores == 2
        back = kps.sync_service_rules(dict(params, objects=objs()), backend=fake)
        assert back['changed'] and back['render'] == 'partial (1 of 4 Services)'
        results.append((fake.payloads[1], r['chains'], r['rules']))
    assert results[0] == results[1]


def test_periodic_full_sync_decision(tmp_path):
    """full_sync_period: an aged record is compared with iptables-save again, except in large
    cluster mode (kube-proxy skips the periodic full sync there) or with the period 0; bad
    values name the field."""
    objs = list(yaml.safe_load_all(fixture('repeated.yaml')))
    fake = FakeBackend()
    params = dict(objects=objs, return_payload=False, state_dir=str(tmp_path), conntrack_tcp_be_liberal=False)
    assert kps.sync_service_rules(params, backend=fake)['sync_reason'] == 'no record'
    head_path = [os.path.join(str(tmp_path), f) for f in os.listdir(str(tmp_path)) if f.endswith('.json')][0]

    def age(seconds, large=None):
        with open(head_path) as f:
            head = json.load(f)
        head['full_sync_at'] -= seconds
        if large is not None:
            head['facts']['large_cluster_mode'] = large
        with open(head_path, 'w') as f:
            json.dump(head, f)
    assert kps.sync_service_rules(params, backend=fake)['sync'] == 'recorded'
    age(4000, large=True)
    r = kps.sync_service_rules(params, backend=fake)
    assert r['sync'] == 'recorded' and r['render'] == 'none'
    age(0, large=False)
    assert kps.sync_service_rules(dict(params, full_sync_period=0), backend=fake)['sync'] == 'recorded'
    r = kps.sync_service_rules(params, backend=fake)
    assert r['sync'] == 'iptables-save' and r['sync_reason'].startswith('periodic full sync (last one 4')
    # the comparison renews the record's time: the next run trusts it again
    assert kps.sync_service_rules(params, backend=fake)['sync'] == 'recorded'
    for bad in (-1, 'x', True):
        with pytest.raises(BarepodError) as e:
            kps.sync_service_rules(dict(params, full_sync_period=bad), backend=fake)
        assert e.value.field == 'full_sync_period'
