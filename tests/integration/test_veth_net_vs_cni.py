# -*- coding: utf-8 -*-
"""Differential tests: veth_net against Debian's containernetworking-plugins bridge + host-local.

The same configuration is applied by the real plugins (CNI_COMMAND=ADD) on one node/pod pair
of throwaway namespaces and by veth_net on another; the observable results are compared.
Then both share one host-local data dir and bridge, proving the on-disk format and the lock
are interoperable, and the plugin's own CHECK command validates what veth_net built.
"""
import json
import os
import subprocess
import uuid

import pytest

from conftest import run_module
from harness import in_ns, sh

CNI_PATH = '/usr/lib/cni'
pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(CNI_PATH, 'bridge')),
                                reason='containernetworking-plugins not installed')

UID = '11111111-2222-3333-4444-555555555555'


def cni_conf(data_dir, network='barepod', subnet='10.244.0.0/24', prev=None):
    conf = {
        'cniVersion': '0.4.0', 'name': network, 'type': 'bridge', 'bridge': 'cni0',
        'isGateway': True, 'isDefaultGateway': True, 'ipMasq': True, 'hairpinMode': True, 'mtu': 1500,
        'ipam': {'type': 'host-local', 'dataDir': data_dir, 'ranges': [[{'subnet': subnet}]]},
    }
    if prev is not None:
        conf['prevResult'] = prev
    return conf


def cni(node, command, plugin, conf, netns, container_id, ifname='eth0'):
    env = dict(os.environ, CNI_COMMAND=command, CNI_NETNS=netns, CNI_IFNAME=ifname,
               CNI_CONTAINERID=container_id, CNI_PATH=CNI_PATH)
    p = subprocess.run(['ip', 'netns', 'exec', node, os.path.join(CNI_PATH, plugin)],
                       input=json.dumps(conf).encode(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       check=False)
    assert p.returncode == 0, '%s %s failed: %s %s' % (plugin, command, p.stdout.decode(), p.stderr.decode())
    return json.loads(p.stdout.decode()) if p.stdout.strip() else None


def loopback_conf():
    return {'cniVersion': '0.4.0', 'name': 'lo', 'type': 'loopback'}


def observe(node, pod, data_dir, network='barepod'):
    """What a user sees: everything but random names, MACs and indexes."""
    nl = dict((x['ifname'], x) for x in json.loads(in_ns(node, 'ip', '-d', '-j', 'link')))
    pl = dict((x['ifname'], x) for x in json.loads(in_ns(pod, 'ip', '-d', '-j', 'link')))
    ports = [x for x in nl.values() if x.get('master') == 'cni0']
    assert len(ports) == 1
    port = ports[0]

    def addrs(ns, dev):
        out = json.loads(in_ns(ns, 'ip', '-j', '-4', 'addr', 'show', 'dev', dev))
        return sorted('%s/%d' % (a['local'], a['prefixlen']) for i in out for a in i['addr_info'])

    def routes(ns):
        return sorted(json.dumps(r, sort_keys=True) for r in json.loads(in_ns(ns, 'ip', '-j', '-4', 'route')))

    nat = [x for x in in_ns(node, 'iptables-save', '-t', 'nat').splitlines() if not x.startswith('#')]
    ipam = {}
    d = os.path.join(data_dir, network)
    for f in sorted(os.listdir(d)):
        if f != 'lock':
            with open(os.path.join(d, f), 'rb') as fh:
                ipam[f] = (fh.read(), oct(os.stat(os.path.join(d, f)).st_mode & 0o777))
    return dict(
        bridge=dict(kind=nl['cni0']['linkinfo']['info_kind'], up='UP' in nl['cni0']['flags'],
                    mtu=nl['cni0']['mtu'], addrs=addrs(node, 'cni0')),
        port=dict(kind=port['linkinfo']['info_kind'], up='UP' in port['flags'], mtu=port['mtu'],
                  hairpin=port['linkinfo']['info_slave_data']['hairpin'],
                  peer_is_pod_eth0=(port.get('link_netnsid') is not None
                                    and port['link_index'] == pl['eth0']['ifindex'])),
        pod_eth0=dict(kind=pl['eth0']['linkinfo']['info_kind'], up='UP' in pl['eth0']['flags'],
                      mtu=pl['eth0']['mtu'], addrs=addrs(pod, 'eth0')),
        pod_lo_up='UP' in pl['lo']['flags'],
        pod_routes=routes(pod),
        node_routes=routes(node),
        ip_forward=in_ns(node, 'cat', '/proc/sys/net/ipv4/ip_forward').strip(),
        nat=nat,
        ipam=ipam,
    )


def test_same_config_same_observable_result(netns, tmp_path):
    cn, cp, bn, bp = netns('bpcn'), netns('bpcp'), netns('bpbn'), netns('bpbp')
    cdir, bdir = str(tmp_path / 'cni'), str(tmp_path / 'bp')

    # the real thing: loopback + bridge/host-local, as a runtime calls them
    cni(cn, 'ADD', 'loopback', loopback_conf(), '/run/netns/' + cp, UID, ifname='lo')
    cni_result = cni(cn, 'ADD', 'bridge', cni_conf(cdir), '/run/netns/' + cp, UID)
    r = run_module('veth_net', dict(uid=UID, netns='/run/netns/' + bp, subnet='10.244.0.0/24', data_dir=bdir),
                   netns=bn)
    assert not r.failed, r

    want = observe(cn, cp, cdir)
    got = observe(bn, bp, bdir)
    for key in want:
        assert got[key] == want[key], key
    assert r['ip'] == cni_result['ips'][0]['address'].split('/')[0]
    assert r['gateway'] == cni_result['ips'][0]['gateway']

    # the plugins' own CHECK accepts what veth_net built
    prev = dict(cni_result)
    prev['interfaces'] = [
        {'name': 'cni0', 'mac': json.loads(in_ns(bn, 'ip', '-j', 'link', 'show', 'cni0'))[0]['address']},
        {'name': r['host_ifname'],
         'mac': json.loads(in_ns(bn, 'ip', '-j', 'link', 'show', r['host_ifname']))[0]['address']},
        {'name': 'eth0', 'mac': r['mac'], 'sandbox': '/run/netns/' + bp},
    ]
    cni(bn, 'CHECK', 'bridge', cni_conf(bdir, prev=prev), '/run/netns/' + bp, UID)

    # and DEL of each leaves the same nothing
    cni(cn, 'DEL', 'bridge', cni_conf(cdir), '/run/netns/' + cp, UID)
    r = run_module('veth_net', dict(uid=UID, state='absent', netns='/run/netns/' + bp, data_dir=bdir), netns=bn)
    assert r.changed and not r.failed
    for ns, d in ((cn, cdir), (bn, bdir)):
        assert 'CNI-' not in in_ns(ns, 'iptables-save', '-t', 'nat')
        assert [f for f in os.listdir(os.path.join(d, 'barepod')) if f[0].isdigit()] == []
        assert sorted(json.loads(in_ns(ns, 'ip', '-j', 'link')), key=lambda x: x['ifindex'])[-1]['ifname'] == 'cni0'


def test_shared_data_dir_and_bridge_with_host_local(netns, tmp_path):
    node = netns('bpsn')
    pods = [netns('bpsp') for _unused in range(4)]
    d = str(tmp_path / 'ipam')
    ids = [str(uuid.uuid4()) for _unused in pods]

    def ours(i, **kw):
        a = dict(uid=ids[i], netns='/run/netns/' + pods[i], subnet='10.244.0.0/24', data_dir=d)
        a.update(kw)
        return run_module('veth_net', a, netns=node)

    assert ours(0)['ip'] == '10.244.0.2'
    res = cni(node, 'ADD', 'bridge', cni_conf(d), '/run/netns/' + pods[1], ids[1])
    assert res['ips'][0]['address'] == '10.244.0.3/24'  # host-local continues after our reservation
    assert ours(2)['ip'] == '10.244.0.4'  # and we continue after host-local's (round-robin)
    # a pod whose address host-local handed out is recognised as taken
    r = ours(3, ip='10.244.0.3')
    assert r.failed and 'already allocated to %s' % ids[1] in r['msg']
    # pods on one bridge, whoever attached them, reach each other
    for src, dst in ((0, '10.244.0.3'), (1, '10.244.0.4'), (2, '10.244.0.2')):
        sh('ip', 'netns', 'exec', pods[src], '/bin/busybox', 'ping', '-c1', '-W2', dst)
    # host-local's DEL releases only its own file; our absent only ours
    cni(node, 'DEL', 'bridge', cni_conf(d), '/run/netns/' + pods[1], ids[1])
    assert ours(0, state='absent')['released'] == ['10.244.0.2']
    left = sorted(f for f in os.listdir(os.path.join(d, 'barepod')) if f[0].isdigit())
    assert left == ['10.244.0.4']
