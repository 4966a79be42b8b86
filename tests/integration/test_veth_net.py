# -*- coding: utf-8 -*-
"""veth_net / node_routes on real kernels, always inside throwaway network namespaces.

A "node" is an `ip netns` namespace the module runs in (run_module(..., netns=node)); pods
are other namespaces given by path. Nothing is added to the root network namespace.
"""
import json
import os
import subprocess
import threading
import uuid

import pytest

from conftest import run_module
from harness import in_ns, sh

from ansible_collections.barepod.linux.plugins.module_utils._veth import chain_name, host_ifname_for

BUSYBOX = '/bin/busybox'


def links(ns):
    return dict((x['ifname'], x) for x in json.loads(in_ns(ns, 'ip', '-d', '-j', 'link')))


def addrs(ns, dev):
    out = json.loads(in_ns(ns, 'ip', '-j', '-4', 'addr', 'show', 'dev', dev))
    return sorted('%s/%d' % (a['local'], a['prefixlen']) for i in out for a in i['addr_info'])


def ping(ns, ip):
    p = subprocess.run(['ip', 'netns', 'exec', ns, BUSYBOX, 'ping', '-c1', '-W2', ip],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    return p.returncode == 0


def snapshot(path):
    """{relpath: (mtime_ns, bytes)} of every file under path: proves zero writes."""
    out = {}
    for root, _unused, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            with open(p, 'rb') as fh:
                out[os.path.relpath(p, path)] = (st.st_mtime_ns, fh.read())
    return out


class Env(object):
    def __init__(self, netns, tmp_path):
        self.make_ns = netns
        self.node = netns('bpn')
        self.tmp = tmp_path
        self.data_dir = str(tmp_path / 'ipam')
        self.state_root = str(tmp_path / 'pods')

    def pod(self):
        name = self.make_ns('bpp')
        return '/run/netns/' + name

    def args(self, uid, netns=None, **kw):
        a = dict(uid=uid, subnet='10.244.0.0/24', data_dir=self.data_dir, state_root=self.state_root)
        if netns:
            a['netns'] = netns
        a.update(kw)
        return a

    def run(self, args, check=False, diff=False, node=None):
        return run_module('veth_net', args, check=check, diff=diff, netns=node or self.node)


@pytest.fixture
def env(netns, tmp_path):
    return Env(netns, tmp_path)


def uid():
    return str(uuid.uuid4())


def test_attach_converges_and_detaches(env):
    u = uid()
    pod = env.pod()
    podname = os.path.basename(pod)
    args = env.args(u, pod, namespace='default', name='web')

    r = env.run(args, check=True, diff=True)
    assert r.changed and not r.failed and r['ip'] == '10.244.0.2'
    assert 'cni0' not in links(env.node) and not os.path.exists(env.data_dir)  # check mode: nothing

    r = env.run(args, diff=True)
    assert r.changed and not r.failed, r
    host = host_ifname_for(u)
    assert (r['ip'], r['gateway'], r['host_ifname'], r['netns']) == ('10.244.0.2', '10.244.0.1', host, pod)
    node_links = links(env.node)
    assert node_links['cni0']['linkinfo']['info_kind'] == 'bridge'
    assert addrs(env.node, 'cni0') == ['10.244.0.1/24']
    veth = node_links[host]
    assert veth['master'] == 'cni0' and veth['mtu'] == 1500 and 'UP' in veth['flags']
    assert veth['linkinfo']['info_slave_data']['hairpin'] is True
    pod_links = links(podname)
    assert pod_links['eth0']['address'] == r['mac'] and 'UP' in pod_links['lo']['flags']
    assert addrs(podname, 'eth0') == ['10.244.0.2/24']
    assert in_ns(podname, 'ip', 'route', 'show', 'default').startswith('default via 10.244.0.1 dev eth0')
    assert in_ns(env.node, 'cat', '/proc/sys/net/ipv4/ip_forward').strip() == '1'
    nat = in_ns(env.node, 'iptables-save', '-t', 'nat')
    assert '-A POSTROUTING -s 10.244.0.2/32' in nat and ':%s' % chain_name('barepod', u) in nat
    with open(os.path.join(env.data_dir, 'barepod', '10.244.0.2'), 'rb') as f:
        assert f.read() == ('%s\r\neth0' % u).encode()
    with open(os.path.join(env.state_root, 'default_web', 'record.json')) as f:
        net = json.load(f)['network']
    assert (net['ip'], net['mac'], net['host_ifname'], net['netns']) == ('10.244.0.2', r['mac'], host, pod)

    # converged: same address, changed=false, zero writes, in check mode too
    before = snapshot(str(env.tmp))
    for check in (False, True):
        r2 = env.run(args, check=check, diff=True)
        assert not r2.changed and r2['ip'] == '10.244.0.2' and r2['actions'] == [], r2
        assert r2['diff']['before'] == r2['diff']['after']
    assert snapshot(str(env.tmp)) == before
    assert in_ns(env.node, 'iptables-save', '-t', 'nat').count('-A POSTROUTING') == 1

    # detach, then again
    absent = dict(args, state='absent')
    absent.pop('subnet')
    r3 = env.run(absent, check=True)
    assert r3.changed and host in links(env.node)
    r3 = env.run(absent)
    assert r3.changed and r3['released'] == ['10.244.0.2']
    assert host not in links(env.node) and 'eth0' not in links(podname)
    assert not os.path.exists(os.path.join(env.data_dir, 'barepod', '10.244.0.2'))
    assert 'CNI-' not in in_ns(env.node, 'iptables-save', '-t', 'nat')
    with open(os.path.join(env.state_root, 'default_web', 'record.json')) as f:
        assert 'network' not in json.load(f)
    assert not env.run(absent).changed


def test_drift_reported_in_check_mode_and_repaired(env):
    u = uid()
    pod = env.pod()
    podname = os.path.basename(pod)
    args = env.args(u, pod)
    assert env.run(args).changed
    host = host_ifname_for(u)

    in_ns(podname, 'ip', 'addr', 'flush', 'dev', 'eth0')  # address and default route gone
    r = env.run(args, check=True)
    acts = set(a['action'] for a in r['actions'])
    assert r.changed and {'add address', 'set default route'} <= acts
    assert addrs(podname, 'eth0') == []
    r = env.run(args)
    assert r.changed and addrs(podname, 'eth0') == ['10.244.0.2/24']
    assert 'default via 10.244.0.1' in in_ns(podname, 'ip', 'route')

    in_ns(env.node, 'ip', 'link', 'del', host)  # the whole pair gone
    r = env.run(args, check=True)
    assert r.changed and 'create veth' in [a['action'] for a in r['actions']]
    r = env.run(args)
    assert r.changed and r['ip'] == '10.244.0.2' and host in links(env.node)
    assert ping(podname, '10.244.0.1')

    in_ns(env.node, 'ip', 'link', 'set', host, 'nomaster')
    in_ns(env.node, 'iptables', '-t', 'nat', '-F', chain_name('barepod', u))
    in_ns(env.node, 'sysctl', '-qw', 'net.ipv4.ip_forward=0')
    r = env.run(args)
    acts = set(a['action'] for a in r['actions'])
    assert {'set master', 'set hairpin', 'masquerade', 'sysctl'} <= acts, acts
    assert not env.run(args).changed
    assert ping(podname, '10.244.0.1')

    # a new MTU reaches both ends of the pair
    r = env.run(dict(args, mtu=1400))
    assert r.changed and sorted(a['target'] for a in r['actions'] if a['action'] == 'set mtu') == \
        sorted([host, '%s:eth0' % pod])
    assert links(env.node)[host]['mtu'] == 1400 and links(podname)['eth0']['mtu'] == 1400
    assert not env.run(dict(args, mtu=1400)).changed
    assert env.run(args).changed and links(podname)['eth0']['mtu'] == 1500

    # turning ip_masq off removes exactly our rules
    r = env.run(dict(args, ip_masq=False))
    assert [a['action'] for a in r['actions']] == ['remove masquerade'] and r['chain'] is None
    assert 'CNI-' not in in_ns(env.node, 'iptables-save', '-t', 'nat')
    assert not env.run(dict(args, ip_masq=False)).changed


def test_absent_when_netns_and_record_are_gone(env):
    u = uid()
    pod = env.pod()
    args = env.args(u, pod, namespace='default', name='gone')
    assert env.run(args).changed
    sh('ip', 'netns', 'del', os.path.basename(pod))  # the sandbox died: pair deleted by the kernel
    sh('rm', '-rf', os.path.join(env.state_root, 'default_gone'))
    absent = dict(uid=u, state='absent', netns=pod, namespace='default', name='gone',
                  data_dir=env.data_dir, state_root=env.state_root)
    r = env.run(absent)
    assert r.changed and not r.failed and r['released'] == ['10.244.0.2']
    assert 'CNI-' not in in_ns(env.node, 'iptables-save', '-t', 'nat')
    assert not os.path.exists(os.path.join(env.state_root, 'default_gone'))
    assert not env.run(absent).changed


def test_reachability_on_one_node(env):
    pods = [env.pod() for _unused in range(2)]
    ips = []
    for p in pods:
        r = env.run(env.args(uid(), p))
        assert not r.failed, r
        ips.append(r['ip'])
    a, b = [os.path.basename(p) for p in pods]
    assert ips == ['10.244.0.2', '10.244.0.3']
    assert ping(a, '10.244.0.1') and ping(a, ips[1]) and ping(b, ips[0])


def test_reachability_across_two_nodes_with_node_routes(env, netns):
    node_b = netns('bpn')
    # join the two nodes by a veth link: 172.30.0.1 <-> 172.30.0.2
    in_ns(env.node, 'ip', 'link', 'add', 'nodelink', 'type', 'veth', 'peer', 'name', 'nodelink', 'netns', node_b)
    for ns, ip in ((env.node, '172.30.0.1/24'), (node_b, '172.30.0.2/24')):
        in_ns(ns, 'ip', 'addr', 'add', ip, 'dev', 'nodelink')
        in_ns(ns, 'ip', 'link', 'set', 'nodelink', 'up')
    nodes = [dict(name='a', pod_cidr='10.244.0.0/24', node_ip='172.30.0.1'),
             dict(name='b', pod_cidr='10.244.1.0/24', node_ip='172.30.0.2')]
    pa, pb = env.pod(), env.pod()
    ra = env.run(env.args(uid(), pa))
    rb = run_module('veth_net', env.args(uid(), pb, subnet='10.244.1.0/24', data_dir=str(env.tmp / 'ipam-b')),
                    netns=node_b)
    assert (ra['ip'], rb['ip']) == ('10.244.0.2', '10.244.1.2')
    assert not ping(os.path.basename(pa), rb['ip'])

    for ns in (env.node, node_b):
        r = run_module('node_routes', dict(nodes=nodes), check=True, netns=ns)
        assert r.changed and len(r['actions']) == 1
        r = run_module('node_routes', dict(nodes=nodes), diff=True, netns=ns)
        assert r.changed and len(r['routes']) == 1
        assert not run_module('node_routes', dict(nodes=nodes), netns=ns).changed
    assert '10.244.1.0/24 via 172.30.0.2 dev nodelink proto 98' in in_ns(env.node, 'ip', 'route')
    assert ping(os.path.basename(pa), rb['ip']) and ping(os.path.basename(pb), ra['ip'])

    # node b leaves: its route goes, other routes are never touched
    r = run_module('node_routes', dict(nodes=nodes[:1], node_name='a'), netns=env.node)
    assert r.changed and r['routes'] == []
    assert '10.244.1.0' not in in_ns(env.node, 'ip', 'route')
    assert '172.30.0.0/24 dev nodelink' in in_ns(env.node, 'ip', 'route')
    assert not ping(os.path.basename(pa), rb['ip'])

    # state=absent removes every owned route and nothing else
    r = run_module('node_routes', dict(state='absent'), netns=node_b)
    assert r.changed and [a['action'] for a in r['actions']] == ['delete route']
    assert 'proto 98' not in in_ns(node_b, 'ip', 'route') and '172.30.0.0/24' in in_ns(node_b, 'ip', 'route')
    assert not run_module('node_routes', dict(state='absent'), netns=node_b).changed


def test_concurrent_pods_never_share_an_address(env):
    pods = [env.pod() for _unused in range(6)]
    results = [None] * len(pods)

    def go(i):
        results[i] = env.run(env.args(uid(), pods[i]))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(pods))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(not r.failed for r in results), [r.get('msg') for r in results]
    ips = [r['ip'] for r in results]
    assert len(set(ips)) == len(ips)
    files = sorted(n for n in os.listdir(os.path.join(env.data_dir, 'barepod')) if n[0].isdigit())
    assert files == sorted(ips)
    bridge_ports = [n for n, link in links(env.node).items() if link.get('master') == 'cni0']
    assert len(bridge_ports) == len(pods)


def test_exhausted_range_fails_and_leaves_no_veth(env):
    kw = dict(subnet='10.244.0.0/24', range_start='10.244.0.10', range_end='10.244.0.11')
    for _unused in range(2):
        assert not env.run(env.args(uid(), env.pod(), **kw)).failed
    u = uid()
    r = env.run(env.args(u, env.pod(), **kw))
    assert r.failed and 'no IP addresses available' in r['msg'] and '_rc' in r
    assert 'Traceback' not in r['_stderr']
    assert host_ifname_for(u) not in links(env.node)
    assert sorted(n for n in os.listdir(os.path.join(env.data_dir, 'barepod')) if n[0].isdigit()) == \
        ['10.244.0.10', '10.244.0.11']


@pytest.mark.parametrize('kw, words', [
    (dict(subnet='10.244.0.0/33'), ['subnet', '10.244.0.0/33']),
    (dict(subnet='10.244.0.0'), ['subnet', 'CIDR']),
    (dict(gateway='10.1.0.1'), ['gateway', '10.1.0.1']),
    (dict(ifname='eth0-way-too-long'), ['ifname', '15']),
    (dict(netns='/run/netns/bp-does-not-exist'), ['netns', 'bp-does-not-exist']),
])
def test_bad_input_is_a_clear_error_and_changes_nothing(env, kw, words):
    a = env.args(uid(), env.pod())
    a.update(kw)
    r = env.run(a)
    assert r.failed and 'Traceback' not in r['_stderr'], r
    for w in words:
        assert w in r['msg'], r['msg']
    assert set(links(env.node)) == {'lo'}
    assert not os.path.exists(env.data_dir)
    assert not os.path.exists('/run/netns/bp-does-not-exist')


def test_address_used_by_another_pod(env):
    first = env.run(env.args(uid(), env.pod(), ip='10.244.0.50'))
    assert first['ip'] == '10.244.0.50'
    before = snapshot(env.data_dir)
    nodelinks = set(links(env.node))
    u = uid()
    r = env.run(env.args(u, env.pod(), ip='10.244.0.50'))
    assert r.failed and '10.244.0.50' in r['msg'] and 'already allocated' in r['msg']
    assert snapshot(env.data_dir) == before and set(links(env.node)) == nodelinks


def test_gc_releases_allocations_of_vanished_pods(env):
    keep, gone = uid(), uid()
    keep_ns, gone_ns = env.pod(), env.pod()
    env.run(env.args(keep, keep_ns))
    env.run(env.args(gone, gone_ns))
    sh('ip', 'netns', 'del', os.path.basename(gone_ns))  # its veth vanishes with it
    r = env.run(env.args(keep, keep_ns, gc=True), check=True)
    assert r.changed and r['collected'] == ['10.244.0.3']
    assert r['collected_chains'] == [chain_name('barepod', gone)]
    assert chain_name('barepod', gone) in in_ns(env.node, 'iptables-save', '-t', 'nat')
    r = env.run(env.args(keep, keep_ns, gc=True))
    assert r['collected'] == ['10.244.0.3'] and r['collected_chains'] == [chain_name('barepod', gone)]
    assert sorted(n for n in os.listdir(os.path.join(env.data_dir, 'barepod')) if n[0].isdigit()) == ['10.244.0.2']
    nat = in_ns(env.node, 'iptables-save', '-t', 'nat')
    assert chain_name('barepod', gone) not in nat and chain_name('barepod', keep) in nat
    assert not env.run(env.args(keep, keep_ns, gc=True)).changed


def test_failure_half_way_rolls_back_a_fresh_attachment(env, tmp_path):
    # an iptables-restore that always fails, found first on PATH: the veth and the address
    # were already made when the masquerade batch fails, and must not be left behind
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'iptables-restore').write_text('#!/bin/sh\necho "iptables-restore: simulated failure" >&2\nexit 4\n')
    (fake / 'iptables-restore').chmod(0o755)
    u = uid()
    path = '%s:%s' % (fake, os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin'))
    r = run_module('veth_net', env.args(u, env.pod()), netns=env.node, env=dict(PATH=path))
    assert r.failed and 'simulated failure' in r['msg'], r
    assert host_ifname_for(u) not in links(env.node)
    assert [n for n in os.listdir(os.path.join(env.data_dir, 'barepod')) if n[0].isdigit()] == []
    # and the same request succeeds once iptables works again
    assert env.run(env.args(u, env.pod()))['ip'] == '10.244.0.3'


def test_bridge_only_mode_for_a_node_without_pods(netns):
    """No uid: only the node side (bridge + gateway address + ip_forward), idempotent, check mode clean."""
    node = netns('bpbr')
    args = dict(subnet='10.244.7.0/24', bridge='bp-br0')
    chk = run_module('veth_net', args, check=True, netns=node)
    assert chk.changed and not chk.failed, chk
    out = subprocess.run(['ip', '-n', node, '-o', 'link'], stdout=subprocess.PIPE, check=True).stdout.decode()
    assert 'bp-br0' not in out
    r = run_module('veth_net', args, netns=node)
    assert r.changed and not r.failed, r
    assert r['gateway'] == '10.244.7.1'
    addr = subprocess.run(['ip', '-n', node, '-o', '-4', 'addr', 'show', 'bp-br0'], stdout=subprocess.PIPE,
                          check=True).stdout.decode()
    assert '10.244.7.1/24' in addr
    fwd = subprocess.run(['ip', 'netns', 'exec', node, 'cat', '/proc/sys/net/ipv4/ip_forward'],
                         stdout=subprocess.PIPE, check=True).stdout.decode().strip()
    assert fwd == '1'
    again = run_module('veth_net', args, netns=node)
    assert not again.changed and not again.failed, again
    bad = run_module('veth_net', dict(args, namespace='default', name='p'), netns=node)
    assert bad.failed and 'uid' in bad['msg']
    bad = run_module('veth_net', dict(state='absent'), netns=node)
    assert bad.failed and 'uid' in bad['msg']
