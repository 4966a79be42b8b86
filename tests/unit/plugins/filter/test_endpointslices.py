# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The endpointslices filter: Services + pods -> EndpointSlices as the endpointslice controller makes them."""

import copy
import os

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from ansible.errors import AnsibleFilterError

from ansible_collections.barepod.linux.plugins.filter.endpointslices import (
    endpointslices, FilterModule, ALPHANUMS)
from ansible_collections.barepod.linux.plugins.module_utils._kprender import render
from ansible_collections.barepod.linux.plugins.module_utils._kpmodel import Settings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


def svc(name='kube-dns', namespace='default', selector=None, ports=None, cluster_ip='10.96.0.10', **spec):
    s = dict(apiVersion='v1', kind='Service',
             metadata=dict(name=name, namespace=namespace),
             spec=dict(selector={'app': 'my-example-app'} if selector is None else selector,
                       ports=ports if ports is not None else [
                           dict(name='dns', port=53, protocol='UDP', targetPort=53),
                           dict(name='dns-tcp', port=53, protocol='TCP', targetPort='dns-tcp')]))
    if cluster_ip is not None:
        s['spec']['clusterIP'] = cluster_ip
    s['spec'].update(spec)
    return s


def view(name, ip, labels=None, node='node-a', ready=True, namespace='default', ports=None, phase='Running',
         uid=None):
    """A pod as barepod.linux.pod_status lists it."""
    status = dict(phase=phase, conditions=[dict(type='Ready', status='True' if ready else 'False')])
    if ip:
        status['podIP'] = ip
        status['podIPs'] = [dict(ip=ip)]
    return dict(namespace=namespace, name=name, uid=uid or 'uid-' + name,
                labels={'app': 'my-example-app'} if labels is None else labels, node=node,
                spec=dict(containers=[dict(name='c', ports=ports if ports is not None else [
                    dict(name='dns-tcp', containerPort=53, protocol='TCP'),
                    dict(name='webapp-port', containerPort=80, protocol='TCP')])]),
                status=status, row={})


def test_registered_as_filter():
    assert FilterModule().filters()['endpointslices'] is endpointslices


def test_demo_service_selects_demo_pod_named_port_resolved():
    out = endpointslices([svc()], [view('core-k8s', '10.244.0.2')])
    assert len(out) == 1
    s = out[0]
    assert s['apiVersion'] == 'discovery.k8s.io/v1' and s['kind'] == 'EndpointSlice'
    assert s['addressType'] == 'IPv4'
    md = s['metadata']
    assert md['namespace'] == 'default'
    assert md['generateName'] == 'kube-dns-'
    assert md['name'].startswith('kube-dns-') and len(md['name']) == len('kube-dns-') + 5
    assert all(c in ALPHANUMS for c in md['name'][-5:])
    assert md['labels'] == {'kubernetes.io/service-name': 'kube-dns',
                            'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io'}
    assert md['ownerReferences'] == [dict(apiVersion='v1', kind='Service', name='kube-dns', controller=True,
                                          blockOwnerDeletion=True)]
    assert s['ports'] == [dict(name='dns', port=53, protocol='UDP'), dict(name='dns-tcp', port=53, protocol='TCP')]
    assert s['endpoints'] == [dict(addresses=['10.244.0.2'],
                                   conditions=dict(ready=True, serving=True, terminating=False),
                                   nodeName='node-a',
                                   targetRef=dict(kind='Pod', namespace='default', name='core-k8s',
                                                  uid='uid-core-k8s'))]


def test_deterministic_names_and_output():
    a = endpointslices([svc()], [view('p1', '10.244.0.2'), view('p2', '10.244.1.2', node='node-b')])
    b = endpointslices([svc()], [view('p2', '10.244.1.2', node='node-b'), view('p1', '10.244.0.2')])
    assert a == b
    other = endpointslices([svc(namespace='kube-system')],
                           [view('p1', '10.244.0.2', namespace='kube-system')])
    assert other[0]['metadata']['name'] != a[0]['metadata']['name']


def test_endpoints_sorted_by_address_across_nodes():
    pods = [view('b', '10.244.1.10', node='node-b'), view('a', '10.244.0.9'), view('c', '10.244.0.10')]
    out = endpointslices([svc()], pods)
    assert [e['addresses'][0] for e in out[0]['endpoints']] == ['10.244.0.9', '10.244.0.10', '10.244.1.10']
    assert [e['nodeName'] for e in out[0]['endpoints']] == ['node-a', 'node-a', 'node-b']


def test_selector_namespace_and_labels():
    pods = [view('match', '10.244.0.2', labels={'app': 'my-example-app', 'x': 'y'}),
            view('other-app', '10.244.0.3', labels={'app': 'other'}),
            view('no-labels', '10.244.0.4', labels={}),
            view('other-ns', '10.244.0.5', namespace='kube-system')]
    out = endpointslices([svc(selector={'app': 'my-example-app'})], pods)
    assert [e['targetRef']['name'] for e in out[0]['endpoints']] == ['match']
    # all selector keys must match
    out = endpointslices([svc(selector={'app': 'my-example-app', 'x': 'y'})], pods)
    assert [e['targetRef']['name'] for e in out[0]['endpoints']] == ['match']


def test_no_selector_and_external_name_get_no_slices():
    assert endpointslices([svc(selector={})], [view('p', '10.244.0.2')]) == []
    s = svc()
    del s['spec']['selector']
    assert endpointslices([s], [view('p', '10.244.0.2')]) == []
    ext = svc(cluster_ip=None, type='ExternalName', externalName='example.com')
    assert endpointslices([ext], [view('p', '10.244.0.2')]) == []


def test_no_matching_pods_gives_placeholder_slice():
    out = endpointslices([svc()], [])
    assert len(out) == 1
    assert out[0]['endpoints'] == [] and out[0]['ports'] == []
    assert out[0]['addressType'] == 'IPv4'


def test_not_ready_terminating_terminal_and_ipless_pods():
    term = view('term', '10.244.0.4')
    term['deletionTimestamp'] = '2026-11-26T00:00:00Z'
    pods = [view('ready', '10.244.0.2'), view('notready', '10.244.0.3', ready=False), term,
            view('done', '10.244.0.5', phase='Succeeded'), view('failed', '10.244.0.6', phase='Failed'),
            view('pending', None, phase='Pending')]
    eps = dict((e['targetRef']['name'], e['conditions']) for e in endpointslices([svc()], pods)[0]['endpoints'])
    assert eps == {'ready': dict(ready=True, serving=True, terminating=False),
                   'notready': dict(ready=False, serving=False, terminating=False),
                   'term': dict(ready=False, serving=True, terminating=True)}


def test_publish_not_ready_addresses():
    out = endpointslices([svc(publishNotReadyAddresses=True)], [view('notready', '10.244.0.3', ready=False)])
    assert out[0]['endpoints'][0]['conditions'] == dict(ready=True, serving=False, terminating=False)


def test_named_port_missing_or_protocol_mismatch_is_left_out():
    # dns-tcp is TCP; a UDP service port named dns-tcp does not match it (FindPort compares protocols)
    ports = [dict(name='a', port=53, protocol='UDP', targetPort='dns-tcp'),
             dict(name='b', port=80, targetPort='webapp-port'),
             dict(name='c', port=81, targetPort='nope')]
    out = endpointslices([svc(ports=ports)], [view('p', '10.244.0.2')])
    assert out[0]['ports'] == [dict(name='b', port=80, protocol='TCP')]


def test_target_port_defaults_to_port_and_app_protocol_kept():
    ports = [dict(port=8080, appProtocol='http')]
    out = endpointslices([svc(ports=ports)], [view('p', '10.244.0.2')])
    assert out[0]['ports'] == [dict(name='', port=8080, protocol='TCP', appProtocol='http')]


def test_pods_with_different_port_mappings_get_different_slices():
    ports = [dict(name='web', port=80, targetPort='web')]
    pods = [view('p1', '10.244.0.2', ports=[dict(name='web', containerPort=8080)]),
            view('p2', '10.244.0.3', ports=[dict(name='web', containerPort=9090)]),
            view('p3', '10.244.0.4', ports=[dict(name='web', containerPort=8080)])]
    out = endpointslices([svc(ports=ports)], pods)
    got = sorted((s['ports'][0]['port'], [e['targetRef']['name'] for e in s['endpoints']]) for s in out)
    assert got == [(8080, ['p1', 'p3']), (9090, ['p2'])]
    assert len(set(s['metadata']['name'] for s in out)) == 2


def test_restartable_init_container_ports():
    pod = view('p', '10.244.0.2', ports=[])
    pod['spec']['initContainers'] = [dict(name='side', restartPolicy='Always', ports=[dict(name='m', containerPort=9)]),
                                     dict(name='init', ports=[dict(name='n', containerPort=10)])]
    out = endpointslices([svc(ports=[dict(name='m', port=1, targetPort='m'), dict(name='n', port=2, targetPort='n')])],
                         [pod])
    assert out[0]['ports'] == [dict(name='m', port=9, protocol='TCP')]


def test_max_endpoints_splits_slices():
    pods = [view('p%d' % i, '10.244.0.%d' % (i + 2)) for i in range(5)]
    out = endpointslices([svc()], pods, max_endpoints=2)
    assert [len(s['endpoints']) for s in out] == [2, 2, 1]
    assert len(set(s['metadata']['name'] for s in out)) == 3
    with pytest.raises(AnsibleFilterError, match='max_endpoints'):
        endpointslices([svc()], pods, max_endpoints=0)


def test_dual_stack_one_slice_per_family():
    p = view('p', '10.244.0.2')
    p['status']['podIPs'] = [dict(ip='10.244.0.2'), dict(ip='fd00::0002')]
    out = endpointslices([svc(ipFamilies=['IPv4', 'IPv6'])], [p, view('v4only', '10.244.0.3')])
    assert [s['addressType'] for s in out] == ['IPv4', 'IPv6']
    assert [e['addresses'] for e in out[0]['endpoints']] == [['10.244.0.2'], ['10.244.0.3']]
    assert [e['addresses'] for e in out[1]['endpoints']] == [['fd00::2']]  # normalised
    # a v6 clusterIP without ipFamilies gives IPv6 slices only
    out = endpointslices([svc(cluster_ip='fd00:96::a')], [p])
    assert [s['addressType'] for s in out] == ['IPv6']


def test_headless_service_labels_and_hostname():
    p = view('web-0', '10.244.0.2')
    p['spec'].update(hostname='web-0', subdomain='web')
    q = view('web-1', '10.244.0.3')
    q['spec'].update(hostname='web-1', subdomain='other')
    s = svc(name='web', cluster_ip='None', ipFamilies=['IPv4'])
    s['metadata']['labels'] = {'tier': 'db', 'kubernetes.io/service-name': 'spoof'}
    out = endpointslices([s], [p, q])
    assert out[0]['metadata']['labels'] == {'tier': 'db', 'service.kubernetes.io/headless': '',
                                            'kubernetes.io/service-name': 'web',
                                            'endpointslice.kubernetes.io/managed-by':
                                                'endpointslice-controller.k8s.io'}
    eps = out[0]['endpoints']
    assert eps[0]['hostname'] == 'web-0' and 'hostname' not in eps[1]


def test_v1_pod_objects_and_pod_status_results_accepted():
    pod = dict(apiVersion='v1', kind='Pod',
               metadata=dict(name='core-k8s', namespace='default', uid='u1', labels={'app': 'my-example-app'}),
               spec=dict(nodeName='kind-worker', containers=[dict(name='c', ports=[
                   dict(name='dns-tcp', containerPort=53)])]),
               status=dict(phase='Running', podIP='10.244.1.2',
                           conditions=[dict(type='Ready', status='True')]))
    # per-node pod_status results, one host without a result (None), nested lists
    results = [dict(changed=False, pods=[view('a', '10.244.0.2')]), None, [[pod]]]
    eps = endpointslices([svc()], results)[0]['endpoints']
    assert [(e['targetRef']['name'], e['nodeName']) for e in eps] == [('a', 'node-a'), ('core-k8s', 'kind-worker')]


def test_other_kinds_ignored_lists_expanded_labels_copied():
    with open(os.path.join(REPO, 'examples', 'kube-dns-service.yaml')) as f:
        docs = list(yaml.safe_load_all(f))
    pods = [view('coredns-1', '10.244.0.2', namespace='kube-system', labels={'k8s-app': 'kube-dns'},
                 node='kind-control-plane'),
            view('coredns-2', '10.244.0.3', namespace='kube-system', labels={'k8s-app': 'kube-dns'},
                 node='kind-control-plane')]
    out = endpointslices(dict(kind='List', items=docs), pods)
    assert len(out) == 1
    s = out[0]
    assert s['metadata']['labels']['k8s-app'] == 'kube-dns'
    assert s['metadata']['labels']['kubernetes.io/name'] == 'CoreDNS'
    # the same ports and endpoints as the hand-written slice of the example (as a kind cluster has them)
    given = docs[1]
    assert s['ports'] == given['ports']
    assert [(e['addresses'], e['conditions'], e['nodeName']) for e in s['endpoints']] == \
        [(e['addresses'], e['conditions'], e['nodeName']) for e in given['endpoints']]


def test_kube_proxy_renders_the_chapter_chains_from_the_slices():
    """Rendered by kube_svc_rules' renderer: the chapter's chain names and the 0.5 probability."""
    with open(os.path.join(REPO, 'examples', 'kube-dns-service.yaml')) as f:
        service = list(yaml.safe_load_all(f))[0]
    pods = [view('coredns-1', '10.244.0.2', namespace='kube-system', labels={'k8s-app': 'kube-dns'}),
            view('coredns-2', '10.244.0.3', namespace='kube-system', labels={'k8s-app': 'kube-dns'})]
    slices = endpointslices([service], pods)
    payload = render([service] + slices, Settings(cluster_cidr='10.244.0.0/16')).payload()
    assert ':KUBE-SVC-ERIFXISQEP7F7OF4' in payload
    assert ':KUBE-SEP-IT2ZTR26TO4XFPTO' in payload
    assert '--probability 0.5000000000' in payload
    assert '-j DNAT --to-destination 10.244.0.2:53' in payload


@pytest.mark.parametrize('mutate, field', [
    (lambda s: s['spec'].pop('clusterIP'), 'services[0].spec.clusterIP'),
    (lambda s: s['spec'].update(clusterIP='10.96.0.300'), 'services[0].spec.clusterIP'),
    (lambda s: s['spec']['ports'][0].update(port=70000), 'services[0].spec.ports[0].port'),
    (lambda s: s['spec']['ports'][0].update(protocol='ICMP'), 'services[0].spec.ports[0].protocol'),
    (lambda s: s['spec']['ports'][0].update(targetPort=[1]), 'services[0].spec.ports[0].targetPort'),
    (lambda s: s['spec'].update(selector='app=x'), 'services[0].spec.selector'),
    (lambda s: s['spec'].update(ipFamilies=['IPv5']), 'services[0].spec.ipFamilies'),
    (lambda s: s['metadata'].pop('name'), 'services[0].metadata.name'),
    (lambda s: s['spec'].update(selector={'version': 1}), 'services[0].spec.selector.version'),
])
def test_bad_services_name_the_field(mutate, field):
    s = svc()
    mutate(s)
    with pytest.raises(AnsibleFilterError) as e:
        endpointslices([s], [view('p', '10.244.0.2')])
    assert str(e.value).startswith(field + ':')


def test_duplicate_service_and_bad_pods():
    with pytest.raises(AnsibleFilterError, match='given twice'):
        endpointslices([svc(), svc()], [])
    bad = view('p', 'not-an-ip')
    with pytest.raises(AnsibleFilterError, match=r'pods\[0\]\.status\.podIPs'):
        endpointslices([svc()], [bad])
    with pytest.raises(AnsibleFilterError, match='must be a Kubernetes object'):
        endpointslices([svc()], ['core-k8s'])
    with pytest.raises(AnsibleFilterError, match=r'pods\[0\]\.labels\.version: label keys and values are strings'):
        endpointslices([svc()], [view('p', '10.244.0.2', labels={'version': 1})])


def test_inputs_not_mutated():
    s, p = svc(), view('p', '10.244.0.2')
    s0, p0 = copy.deepcopy(s), copy.deepcopy(p)
    endpointslices([s], [p])
    assert (s, p) == (s0, p0)


def test_long_service_name_prefix_truncated():
    name = 'a' * 63
    out = endpointslices([svc(name=name)], [])
    assert out[0]['metadata']['generateName'] == 'a' * 58
    assert len(out[0]['metadata']['name']) == 63


def test_pod_status_views_resolve_named_ports():
    """pod_view (what pod_status lists) carries the recorded spec, so named targetPorts resolve."""
    from ansible_collections.barepod.linux.plugins.module_utils._podstatus import pod_view, manifest_summary
    with open(os.path.join(REPO, 'examples', 'demo-pod.yaml')) as f:
        manifest = yaml.safe_load(f)
    alive = dict(pid=1, starttime=0, started_at='2026-11-26T00:00:00Z')
    rec = dict(namespace='default', name='core-k8s', uid='u1', manifest=manifest_summary(manifest),
               sandbox=dict(alive, namespaces=['net']), containers={'any-old-name-will-do': dict(alive)},
               network=dict(ip='10.244.0.7'))
    v = pod_view(rec, node='node-a')
    assert v['spec']['containers'][0]['ports'][1]['name'] == 'dns-tcp'
    with open(os.path.join(REPO, 'examples', 'demo-service.yaml')) as f:
        service = yaml.safe_load(f)
    out = endpointslices([service], [v])
    assert [p for p in out[0]['ports'] if p['name'] == 'dns-tcp'] == [dict(name='dns-tcp', port=53, protocol='TCP')]
    assert out[0]['endpoints'][0]['addresses'] == ['10.244.0.7']


# ---------------------------------------------------------------- properties

_pod = st.fixed_dictionaries(dict(
    app=st.sampled_from(['my-example-app', 'other']),
    ns=st.sampled_from(['default', 'kube-system']),
    ip=st.integers(2, 250),
    ready=st.booleans(),
    phase=st.sampled_from(['Running', 'Running', 'Pending', 'Succeeded']),
    web=st.sampled_from([None, 8080, 9090]),
    node=st.sampled_from(['node-a', 'node-b'])))


@settings(max_examples=150, deadline=None)
@given(st.lists(_pod, max_size=25, unique_by=lambda p: p['ip']), st.integers(1, 7), st.randoms())
def test_properties(specs, max_endpoints, rnd):
    pods = []
    for i, p in enumerate(specs):
        ports = [dict(name='dns-tcp', containerPort=53, protocol='TCP')]
        if p['web']:
            ports.append(dict(name='web', containerPort=p['web']))
        pods.append(view('p%d' % i, '10.244.0.%d' % p['ip'], labels={'app': p['app']}, ready=p['ready'],
                         namespace=p['ns'], ports=ports, phase=p['phase'], node=p['node']))
    service = svc(ports=[dict(name='dns-tcp', port=53, targetPort='dns-tcp'), dict(name='web', port=80,
                                                                                  targetPort='web')])
    out = endpointslices([service], pods, max_endpoints=max_endpoints)
    shuffled = list(pods)
    rnd.shuffle(shuffled)
    assert endpointslices([service], shuffled, max_endpoints=max_endpoints) == out   # order-independent
    expected = sorted('p%d' % i for i, p in enumerate(specs)
                      if p['app'] == 'my-example-app' and p['ns'] == 'default' and p['phase'] != 'Succeeded')
    got = sorted(e['targetRef']['name'] for s in out for e in s['endpoints'])
    assert got == expected                                               # each selected pod exactly once
    assert all(len(s['endpoints']) <= max_endpoints for s in out)
    assert len(set(s['metadata']['name'] for s in out)) == len(out)      # unique names
    for s in out:
        ports = dict((p['name'], p['port']) for p in s['ports'])
        for e in s['endpoints']:
            spec = specs[int(e['targetRef']['name'][1:])]
            assert ports == (dict({'dns-tcp': 53}, web=spec['web']) if spec['web'] else {'dns-tcp': 53})
            assert e['conditions']['ready'] == spec['ready'] == e['conditions']['serving']
    if not expected:
        assert len(out) == 1 and out[0]['endpoints'] == [] and out[0]['ports'] == []
