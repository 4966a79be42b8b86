# -*- coding: utf-8 -*-
"""kube_svc_rules on real iptables (nft and legacy), always inside throwaway network namespaces.

Topology, all made here and deleted afterwards (nothing in the root network namespace):

    client (192.168.77.2) --veth-- node (192.168.77.1 | br 10.244.0.1/24) --veth-- be1 (10.244.0.11)
                                                                         \\-veth-- be2 (10.244.0.12)

The node holds the rules (run_module(..., netns=node)); be1/be2 run a tiny TCP server on 8080
that answers with its name; the client opens many connections to the Service's cluster IP.
"""
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from conftest import COLLECTIONS_ROOT, run_module
from harness import in_ns, sh

SERVER = textwrap.dedent('''
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8080))
    s.listen(256)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(sys.argv[1].encode())
        finally:
            c.close()
''')

CLIENT = textwrap.dedent('''
    import errno, json, socket, sys
    ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    out = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((ip, port))
            out.append(s.recv(64).decode() or "empty")
        except ConnectionRefusedError:
            out.append("refused")
        except socket.timeout:
            out.append("timeout")
        except OSError as e:
            out.append(errno.errorcode.get(e.errno, str(e)))
        finally:
            s.close()
    print(json.dumps(out))
''')

CLUSTER_CIDR = '10.244.0.0/16'
SVC_IP, AFF_IP, EMPTY_IP = '10.96.0.10', '10.96.0.11', '10.96.0.12'


def service(name, ip, affinity=False):
    spec = dict(clusterIP=ip, ports=[dict(name='http', port=80, targetPort=8080, protocol='TCP')])
    if affinity:
        spec['sessionAffinity'] = 'ClientIP'
    return dict(apiVersion='v1', kind='Service', metadata=dict(namespace='default', name=name), spec=spec)


def slice_(svc, ips):
    return dict(apiVersion='discovery.k8s.io/v1', kind='EndpointSlice',
                metadata=dict(namespace='default', name=svc + '-abc',
                              labels={'kubernetes.io/service-name': svc}),
                addressType='IPv4', endpoints=[dict(addresses=[ip], nodeName='node') for ip in ips],
                ports=[dict(name='http', port=8080, protocol='TCP')])


def objects(web=('10.244.0.11', '10.244.0.12'), extra=()):
    return [service('web', SVC_IP), slice_('web', web),
            service('sticky', AFF_IP, affinity=True), slice_('sticky', ['10.244.0.11', '10.244.0.12']),
            service('empty', EMPTY_IP)] + list(extra)


class ServiceLab(object):
    """Not a pod node (that is harness.Node) but kube-proxy's test topology: a node namespace
    with the rules, a client namespace and two backend namespaces serving on the pod network,
    with the iptables backend under test; its run() is one kube_svc_rules run on the node."""

    def __init__(self, backend, tmp):
        self.backend = backend
        self.tmp = tmp
        tag = uuid.uuid4().hex[:6]
        self.node, self.client = 'bpkn%s' % tag, 'bpkc%s' % tag
        self.be = ['bpkb1%s' % tag, 'bpkb2%s' % tag]
        self.procs = []
        self.save_cmd = 'iptables-%s-save' % backend
        self.restore_cmd = 'iptables-%s-restore' % backend

    def setup(self):
        for ns in [self.node, self.client] + self.be:
            sh('ip', 'netns', 'add', ns)
        n = self.node
        in_ns(n, 'sysctl', '-qw', 'net.ipv4.ip_forward=1')
        in_ns(n, 'ip', 'link', 'set', 'lo', 'up')
        in_ns(n, 'ip', 'link', 'add', 'br0', 'type', 'bridge')
        in_ns(n, 'ip', 'addr', 'add', '10.244.0.1/24', 'dev', 'br0')
        in_ns(n, 'ip', 'link', 'set', 'br0', 'up')
        # the service range must be routable on the node, as on a real one (default route)
        in_ns(n, 'ip', 'route', 'add', '10.96.0.0/16', 'dev', 'br0')
        in_ns(n, 'ip', 'link', 'add', 'cl0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', self.client)
        in_ns(n, 'ip', 'addr', 'add', '192.168.77.1/24', 'dev', 'cl0')
        in_ns(n, 'ip', 'link', 'set', 'cl0', 'up')
        c = self.client
        for cmd in (['ip', 'link', 'set', 'lo', 'up'], ['ip', 'addr', 'add', '192.168.77.2/24', 'dev', 'eth0'],
                    ['ip', 'link', 'set', 'eth0', 'up'], ['ip', 'route', 'add', 'default', 'via', '192.168.77.1']):
            in_ns(c, *cmd)
        for i, be in enumerate(self.be):
            host = 'vb%d' % i
            in_ns(n, 'ip', 'link', 'add', host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', be)
            in_ns(n, 'ip', 'link', 'set', host, 'master', 'br0')
            in_ns(n, 'ip', 'link', 'set', host, 'up')
            for cmd in (['ip', 'link', 'set', 'lo', 'up'],
                        ['ip', 'addr', 'add', '10.244.0.1%d/24' % (i + 1), 'dev', 'eth0'],
                        ['ip', 'link', 'set', 'eth0', 'up'], ['ip', 'route', 'add', 'default', 'via', '10.244.0.1']):
                in_ns(be, *cmd)
        server = os.path.join(self.tmp, 'server.py')
        with open(server, 'w') as f:
            f.write(SERVER)
        self.client_py = os.path.join(self.tmp, 'client.py')
        with open(self.client_py, 'w') as f:
            f.write(CLIENT)
        for i, be in enumerate(self.be):
            self.procs.append(subprocess.Popen(['ip', 'netns', 'exec', be, sys.executable, server, 'be%d' % (i + 1)],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                               stdin=subprocess.DEVNULL))
        for ip in ('10.244.0.11', '10.244.0.12'):
            for _try in range(50):
                if self.connect(ip, 8080, 1, ns=self.node) != ['refused']:
                    break
                time.sleep(0.05)
        # foreign chains and rules that must survive every sync
        self.restore(textwrap.dedent('''\
            *filter
            :FOREIGN-FILTER - [0:0]
            :KUBE-SOMETHING-ELSE - [0:0]
            -A FOREIGN-FILTER -s 203.0.113.9/32 -j DROP
            -A INPUT -p tcp -m tcp --dport 2222 -m comment --comment "foreign input" -j ACCEPT
            -A KUBE-SOMETHING-ELSE -j RETURN
            COMMIT
            *nat
            :FOREIGN-NAT - [0:0]
            -A FOREIGN-NAT -d 198.51.100.1/32 -j RETURN
            -A POSTROUTING -s 10.99.0.0/16 -m comment --comment "foreign masq" -j MASQUERADE
            COMMIT
            '''))
        self.foreign = [ln for ln in self.save().splitlines()
                        if 'FOREIGN' in ln or 'foreign' in ln or 'SOMETHING' in ln]
        assert len(self.foreign) == 8

    def restore(self, text):
        in_ns(self.node, self.restore_cmd, '--noflush', input=text)

    def save(self):
        return ''.join(ln + '\n' for ln in in_ns(self.node, self.save_cmd).splitlines()
                       if not ln.startswith('#'))

    def rules(self):
        """Rules only (counters and comments of the dump stripped), for before/after equality."""
        return [ln.rsplit(' [', 1)[0] if ln.startswith(':') else ln
                for ln in self.save().splitlines() if ln.startswith(('-A', ':', '*'))]

    def connect(self, ip, port, n, ns=None):
        return json.loads(in_ns(ns or self.client, sys.executable, self.client_py, ip, str(port), str(n)))

    def args(self, **args):
        a = dict(backend=self.backend, cluster_cidr=CLUSTER_CIDR, node_name='node', return_payload=False,
                 state_dir=os.path.join(self.tmp, 'state'))
        a.update(args)
        return a

    def run(self, check=False, diff=False, **args):
        return run_module('kube_svc_rules', self.args(**args), check=check, diff=diff, netns=self.node)

    def assert_foreign_intact(self):
        text = self.save()
        for line in self.foreign:
            assert line in text, line

    def teardown(self):
        for p in self.procs:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        for ns in [self.node, self.client] + self.be:
            subprocess.run(['ip', 'netns', 'del', ns], stderr=subprocess.DEVNULL, check=False)


@pytest.fixture(params=['nft', 'legacy'])
def node(request, tmp_path):
    n = ServiceLab(request.param, str(tmp_path))
    try:
        n.setup()
        yield n
    finally:
        n.teardown()


@pytest.fixture
def legacy_node(tmp_path):
    n = ServiceLab('legacy', str(tmp_path))
    try:
        n.setup()
        yield n
    finally:
        n.teardown()


def counting_shim(tmp_path, real):
    count = tmp_path / 'restores'
    shim = tmp_path / 'restore-shim'
    shim.write_text('#!/bin/sh\necho run >> %s\nexec %s "$@"\n' % (count, real))
    shim.chmod(0o755)
    return str(shim), count


def test_traffic_affinity_reject_and_endpoint_removal(node):
    r = node.run(objects=objects())
    assert r.changed and not r.failed, r
    assert r['restores'] == 1 and r['backend'] == node.backend
    node.assert_foreign_intact()

    got = node.connect(SVC_IP, 80, 40)
    assert set(got) == {'be1', 'be2'}, got           # ClusterIP:port reaches both backends
    assert min(got.count('be1'), got.count('be2')) >= 5, got

    sticky = node.connect(AFF_IP, 80, 20)
    assert len(set(sticky)) == 1 and sticky[0] in ('be1', 'be2'), sticky   # ClientIP affinity pins

    assert node.connect(EMPTY_IP, 80, 3) == ['refused'] * 3   # no endpoints: REJECT

    r = node.run(objects=objects(web=['10.244.0.11']))       # remove be2 from web
    assert r.changed and r['restores'] == 1
    sep = [c for c in r['chains']['removed'] if '-SEP-' in c]
    assert len(sep) == 1
    assert set(node.connect(SVC_IP, 80, 20)) == {'be1'}
    node.assert_foreign_intact()


def test_idempotent_no_restore_second_run(node, tmp_path):
    shim, count = counting_shim(tmp_path, node.restore_cmd)
    r = node.run(objects=objects(), iptables_restore=shim)
    assert r.changed and count.read_text().count('run') == 1
    before = node.rules()
    r = node.run(objects=objects(), iptables_restore=shim)
    assert not r.changed, r['chains']
    assert r['sync'] == 'recorded'                       # trusted record, canary intact
    assert r['restores'] == 0 and r['restore_payload'] == ''
    r = node.run(objects=objects(), iptables_restore=shim, resync='always')
    assert not r.changed and r['sync'] == 'iptables-save'
    assert count.read_text().count('run') == 1          # no iptables-restore at all
    assert node.rules() == before
    # check mode on a converged node: nothing to do either
    r = node.run(objects=objects(), iptables_restore=shim, check=True)
    assert not r.changed


def test_flush_is_noticed_and_hand_edits_repaired_by_resync_always(node):
    node.run(objects=objects())
    assert os.listdir(os.path.join(node.tmp, 'state'))
    # a firewalld-style reload: every table flushed, user chains deleted, canary included
    in_ns(node.node, 'iptables-%s-restore' % node.backend, input='*mangle\nCOMMIT\n*nat\nCOMMIT\n*filter\nCOMMIT\n')
    assert 'KUBE-SERVICES' not in node.save()
    r = node.run(objects=objects())
    assert r.changed and r['sync'] == 'iptables-save'
    assert set(node.connect(SVC_IP, 80, 20)) == {'be1', 'be2'}
    # a hand edit inside an owned chain: trusted record does not look, resync=always repairs it
    node.restore('*nat\n-A KUBE-SERVICES -d 10.96.0.99/32 -j RETURN\nCOMMIT\n')
    assert not node.run(objects=objects()).changed
    r = node.run(objects=objects(), resync='always')
    assert r.changed and r['chains']['changed'] == ['nat/KUBE-SERVICES']
    assert '10.96.0.99' not in node.save()


def _age_record(state_dir, seconds):
    """Pretend the last comparison with iptables-save happened `seconds` ago."""
    heads = [f for f in os.listdir(state_dir) if f.endswith('.json')]
    assert len(heads) == 1, heads
    path = os.path.join(state_dir, heads[0])
    with open(path) as f:
        head = json.load(f)
    head['full_sync_at'] -= seconds
    with open(path, 'w') as f:
        json.dump(head, f)


def test_periodic_full_sync_repairs_a_hand_edit_under_resync_auto(node):
    """kube-proxy's FullSyncPeriod: while the canary survives a hand-deleted rule inside an owned
    chain goes unnoticed; once the last comparison is older than full_sync_period the module
    compares with iptables-save again and puts the rule back (and not before)."""
    state = os.path.join(node.tmp, 'state')
    first = node.run(objects=objects())
    assert first.changed and first['sync_reason'] == 'no record'
    svc_chain = [ln.split(' -j ')[1].split()[0] for ln in node.save().splitlines()
                 if ln.startswith('-A KUBE-SERVICES') and SVC_IP in ln][0]
    assert svc_chain.startswith('KUBE-SVC-')
    chain_rules = [ln for ln in node.save().splitlines() if ln.startswith('-A %s ' % svc_chain)]
    number = next(i for i, ln in enumerate(chain_rules) if '-j KUBE-SEP-' in ln)
    sep_jump = chain_rules[number]
    in_ns(node.node, 'iptables-%s' % node.backend, '-t', 'nat', '-D', svc_chain, str(number + 1))
    assert sep_jump not in node.save()
    r = node.run(objects=objects())
    assert not r.changed and r['sync'] == 'recorded' and r['sync_reason'].startswith('record trusted')
    _age_record(state, 600)
    assert not node.run(objects=objects(), full_sync_period=3600).changed      # not due yet
    _age_record(state, 3600)
    assert not node.run(objects=objects(), full_sync_period=0).changed         # periodic check off
    r = node.run(objects=objects(), full_sync_period=3600)
    assert r.changed and r['sync'] == 'iptables-save' and r['sync_reason'].startswith('periodic full sync')
    assert r['chains']['changed'] == ['nat/' + svc_chain]
    assert sep_jump in node.save()
    r = node.run(objects=objects())
    assert not r.changed and r['sync'] == 'recorded' and r['restores'] == 0
    assert set(node.connect(SVC_IP, 80, 20)) == {'be1', 'be2'}


def test_check_mode_writes_no_record(node):
    r = node.run(objects=objects(), check=True)
    assert r.changed and not os.path.exists(os.path.join(node.tmp, 'state'))


def test_partial_sync_writes_only_changed_chains(node):
    node.run(objects=objects())
    r = node.run(objects=objects(web=['10.244.0.12']), diff=True)
    assert r.changed
    ch = r['chains']
    assert [c.split('-')[1] for c in ch['changed']] == ['SVC']
    assert len(ch['added']) == 0 and len(ch['removed']) == 1       # be1's SEP chain goes
    payload = r['restore_payload']
    assert payload.startswith('*nat\n') and '*filter' not in payload
    assert 'KUBE-SERVICES' not in payload and payload.count('COMMIT') == 1
    assert '10.244.0.11:8080' in r['diff']['before'] and '10.244.0.11:8080' not in r['diff']['after']
    assert set(node.connect(SVC_IP, 80, 10)) == {'be2'}


def test_services_changed_alone_are_rendered_alone(node, tmp_path):
    """resync=auto, return_payload=false: unchanged input renders nothing; a Service whose
    endpoints changed is rendered alone and only its chains are written; a change to what a
    Service puts into the shared chains (or a Service added) falls back to the full render.
    After each step iptables-save equals a from-scratch render (resync=always changes nothing)."""
    shim, count = counting_shim(tmp_path, node.restore_cmd)

    def converged(objs):
        r = node.run(objects=objs, resync='always', diff=True)
        assert not r.changed, r['diff']

    node.run(objects=objects())
    r = node.run(objects=objects(), iptables_restore=shim)
    assert not r.changed and r['render'] == 'none' and r['sync'] == 'recorded' and not count.exists()
    assert r['services'] == 3 and r['endpoints'] == 4 and r['rules']['nat'] > 0
    full = node.run(objects=objects(), resync='always')
    assert (full['services'], full['endpoints'], full['rules']) == (r['services'], r['endpoints'], r['rules'])
    # one endpoint of web goes: web alone is rendered, only its chains written
    objs = objects(web=['10.244.0.12'])
    r = node.run(objects=objs, iptables_restore=shim)
    assert r.changed and r['render'].startswith('partial (1 of 3'), r['render']
    assert count.read_text().count('run') == 1 and r['restores'] == 1
    ch = r['chains']
    assert ch['removed'] and all(c.startswith(('nat/KUBE-SVC-', 'nat/KUBE-SEP-'))
                                 for c in ch['added'] + ch['changed'] + ch['removed']), ch
    assert r['endpoints'] == 3 and 'KUBE-SERVICES' not in r['restore_payload']
    assert set(node.connect(SVC_IP, 80, 10)) == {'be2'}
    converged(objs)
    assert not node.run(objects=objs).changed
    # and back, with affinity Service's endpoints reordered (same rules)
    objs = objects()
    objs[3]['endpoints'].reverse()
    r = node.run(objects=objs)
    assert r.changed and r['render'].startswith('partial (2 of 3')
    converged(objs)
    assert set(node.connect(SVC_IP, 80, 20)) == {'be1', 'be2'}
    # the empty Service gets an endpoint: its REJECT in filter/KUBE-SERVICES goes -> full render
    objs = objects(extra=[slice_('empty', ['10.244.0.11'])])
    r = node.run(objects=objs)
    assert r.changed and r['render'] == 'full' and 'filter/KUBE-SERVICES' in r['chains']['changed']
    converged(objs)
    assert set(node.connect(EMPTY_IP, 80, 3)) == {'be1'}
    # a bad change to one Service is still refused before anything is applied
    bad = objects(extra=[slice_('empty', ['10.244.0.11'])])
    bad[1]['ports'][0]['port'] = 70000
    before = node.rules()
    r = node.run(objects=bad)
    assert r.failed and 'ports[0].port' in r['msg'] and node.rules() == before
    # a Service added: full render
    objs.append(service('more', '10.96.0.13'))
    r = node.run(objects=objs)
    assert r.changed and r['render'] == 'full'
    converged(objs)
    node.assert_foreign_intact()


def test_check_mode_and_diff_change_nothing(node):
    before = node.rules()
    r = node.run(objects=objects(), check=True, diff=True)
    assert r.changed and r['restores'] == 0
    assert 'nat/KUBE-SERVICES' in r['chains']['added']
    assert '-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp' in r['diff']['after']
    assert node.rules() == before


def test_failed_restore_leaves_previous_rules(node, tmp_path):
    node.run(objects=objects())
    before = node.rules()
    # 1. the restore binary fails outright
    failing = tmp_path / 'fail'
    failing.write_text('#!/bin/sh\ncat >/dev/null\necho "iptables-restore: line 2 failed" >&2\nexit 1\n')
    failing.chmod(0o755)
    r = node.run(objects=objects(web=['10.244.0.12']), iptables_restore=str(failing))
    assert r.failed and 'line 2 failed' in r['msg']
    assert node.rules() == before
    # 2. a broken rule in the middle of the real batch: the kernel commits none of it
    broken = tmp_path / 'broken'
    broken.write_text('#!/bin/sh\nsed "s/^COMMIT$/-A KUBE-SERVICES -j NO-SUCH-CHAIN\\nCOMMIT/" | exec %s "$@"\n'
                      % node.restore_cmd)
    broken.chmod(0o755)
    r = node.run(objects=objects(web=['10.244.0.12']), iptables_restore=str(broken))
    assert r.failed and 'iptables-restore failed' in r['msg']
    assert node.rules() == before
    # the record is gone with the failed attempt: the next run looks at the kernel again
    r = node.run(objects=objects())
    assert not r.changed and r['sync'] == 'iptables-save'
    assert set(node.connect(SVC_IP, 80, 20)) == {'be1', 'be2'}   # traffic as before
    node.assert_foreign_intact()


@pytest.mark.parametrize('mutate,field', [
    (lambda o: o[0]['spec'].pop('clusterIP'), 'objects[0].spec.clusterIP'),
    (lambda o: o[0]['spec'].update(clusterIP='10.96.0.999'), 'objects[0].spec.clusterIP'),
    (lambda o: o[0]['spec']['ports'][0].update(port=65536), 'objects[0].spec.ports[0].port'),
    (lambda o: o[0]['spec']['ports'][0].update(protocol='ICMP'), 'objects[0].spec.ports[0].protocol'),
    (lambda o: o[1]['metadata']['labels'].update({'kubernetes.io/service-name': 'ghost'}),
     'objects[1].metadata.labels.kubernetes.io/service-name'),
])
def test_bad_input_fails_clearly_and_applies_nothing(mutate, field, tmp_path):
    n = ServiceLab('nft', str(tmp_path))
    sh('ip', 'netns', 'add', n.node)
    try:
        objs = objects()
        mutate(objs)
        r = n.run(objects=objs)
        assert r.failed and field in r['msg'], r['msg']
        assert 'Traceback' not in r['msg']
        assert 'KUBE' not in in_ns(n.node, 'iptables-nft-save') + in_ns(n.node, 'iptables-legacy-save')
    finally:
        subprocess.run(['ip', 'netns', 'del', n.node], check=False)


def test_absent_removes_everything_owned(node):
    """On a barepod-only host the module created KUBE-FIREWALL and KUBE-MARK-MASQ itself (the
    record and the canary token say so): absent removes them too and leaves no KUBE chain."""
    node.run(objects=objects())
    r = node.run(state='absent', diff=True)
    assert r.changed and r['chains']['removed']
    assert 'filter/KUBE-FIREWALL' in r['chains']['removed'] and 'nat/KUBE-MARK-MASQ' in r['chains']['removed']
    text = node.save()
    left = [ln for ln in text.splitlines() if 'KUBE' in ln and 'SOMETHING' not in ln]
    assert not left, left
    assert 'PROXY-CANARY' not in text and not os.listdir(os.path.join(node.tmp, 'state'))
    node.assert_foreign_intact()
    assert not node.run(state='absent').changed
    # the record lost (e.g. another state_dir): the canary's token still says what was created
    node.run(objects=objects(), state_dir=os.path.join(node.tmp, 'state-a'))
    r = node.run(state='absent', state_dir=os.path.join(node.tmp, 'state-b'))
    assert r.changed and r['sync'] == 'iptables-save'
    assert not [ln for ln in node.save().splitlines() if 'KUBE' in ln and 'SOMETHING' not in ln]
    node.assert_foreign_intact()


def test_absent_leaves_kubelet_chains_that_were_there_before(node):
    """Where KUBE-FIREWALL and KUBE-MARK-MASQ existed before the first sync (kubelet's), absent
    leaves them, as kube-proxy's own cleanup does; everything else owned goes."""
    node.restore(textwrap.dedent('''\
        *filter
        :KUBE-FIREWALL - [0:0]
        -A KUBE-FIREWALL -m comment --comment "kubelet: drop marked" -m mark --mark 0x8000/0x8000 -j DROP
        -A INPUT -j KUBE-FIREWALL
        COMMIT
        *nat
        :KUBE-MARK-MASQ - [0:0]
        -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
        COMMIT
        '''))
    r = node.run(objects=objects())
    assert r.changed and 'nat/KUBE-MARK-MASQ' not in r['chains']['added']
    assert set(node.connect(SVC_IP, 80, 10)) == {'be1', 'be2'}
    r = node.run(state='absent')
    assert r.changed
    assert 'filter/KUBE-FIREWALL' not in r['chains']['removed'] and 'nat/KUBE-MARK-MASQ' not in r['chains']['removed']
    text = node.save()
    assert ':KUBE-FIREWALL ' in text and ':KUBE-MARK-MASQ ' in text
    assert '-A INPUT -j KUBE-FIREWALL' in text
    left = set(ln.split()[0][1:] for ln in text.splitlines() if ln.startswith(':KUBE'))
    assert left == {'KUBE-FIREWALL', 'KUBE-MARK-MASQ', 'KUBE-SOMETHING-ELSE'}, left
    node.assert_foreign_intact()
    assert not node.run(state='absent').changed


def test_no_legacy_tables_appear_in_an_nft_namespace(tmp_path):
    """backend auto on a namespace with only nft rules: the detection must not instantiate
    legacy tables (iptables-nft would then warn "iptables-legacy tables present")."""
    n = ServiceLab('nft', str(tmp_path))
    sh('ip', 'netns', 'add', n.node)
    try:
        for i in range(3):
            in_ns(n.node, 'iptables-nft', '-A', 'INPUT', '-s', '192.0.2.%d' % i, '-j', 'ACCEPT')
        r = run_module('kube_svc_rules', dict(objects=objects(), return_payload=False,
                                              state_dir=str(tmp_path / 'state')), netns=n.node)
        assert r['backend'] == 'nft', r.get('backend_reason') or r.get('msg')
        assert in_ns(n.node, 'cat', '/proc/net/ip_tables_names').strip() == ''
        assert 'legacy tables present' not in in_ns(n.node, 'iptables-nft-save')
    finally:
        subprocess.run(['ip', 'netns', 'del', n.node], check=False)


def test_prefix_coexists_with_kube_chains(node):
    node.run(objects=objects())                          # "the real kube-proxy"
    kube = node.rules()
    other = [service('web', '10.96.0.30'), slice_('web', ['10.244.0.12'])]
    r = node.run(objects=other, chain_prefix='BPOD')
    assert r.changed
    assert all(c.split('/')[1].startswith('BPOD-') for c in r['chains']['added'])
    assert all(ln in node.rules() for ln in kube)           # nothing of KUBE's touched
    assert set(node.connect('10.96.0.30', 80, 5)) == {'be2'}
    assert set(node.connect(SVC_IP, 80, 20)) == {'be1', 'be2'}
    assert not node.run(objects=objects()).changed         # and KUBE still converged
    r = node.run(state='absent', chain_prefix='BPOD')
    assert r.changed and 'BPOD' not in node.save()
    assert not node.run(objects=objects()).changed
    node.assert_foreign_intact()


def test_auto_backend_and_offline_mode(tmp_path):
    r = run_module('kube_svc_rules', dict(objects=objects(), apply=False, cluster_cidr=CLUSTER_CIDR))
    assert not r.changed and r['payload'].startswith('*filter\n')
    assert 'backend' not in r
    n = ServiceLab('nft', str(tmp_path))
    sh('ip', 'netns', 'add', n.node)
    try:
        in_ns(n.node, 'iptables-nft', '-t', 'mangle', '-N', 'KUBE-IPTABLES-HINT')
        r = run_module('kube_svc_rules', dict(objects=objects(), return_payload=False,
                                              state_dir=str(tmp_path / 'state')), netns=n.node)
        assert r['backend'] == 'nft' and 'KUBE-IPTABLES-HINT' in r['backend_reason']
        assert 'KUBE-SERVICES' in in_ns(n.node, 'iptables-nft-save', '-t', 'nat')
    finally:
        subprocess.run(['ip', 'netns', 'del', n.node], check=False)


def every_rule_shape():
    """kube-proxy's overall golden scenario (NodePort, LoadBalancer + source ranges, externalIPs,
    Local policy, ClientIP affinity, no endpoints) plus TCP/UDP/SCTP ports and a three-endpoint
    Service."""
    import yaml
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, '..', 'unit', 'plugins', 'module_utils', 'fixtures', 'kubeproxy',
                           'overall.yaml')) as f:
        objs = list(yaml.safe_load_all(f))
    ports = [dict(name='dns', port=53, protocol='UDP'), dict(name='dns-tcp', port=53, protocol='TCP'),
             dict(name='sctp', port=9999, protocol='SCTP', nodePort=30999)]
    objs.append(dict(kind='Service', metadata=dict(namespace='kube-system', name='multi'),
                     spec=dict(type='NodePort', clusterIP='172.30.0.53', ports=ports, sessionAffinity='ClientIP',
                               sessionAffinityConfig=dict(clientIP=dict(timeoutSeconds=60)))))
    objs.append(dict(kind='EndpointSlice', addressType='IPv4',
                     metadata=dict(namespace='kube-system', name='multi-1',
                                   labels={'kubernetes.io/service-name': 'multi'}),
                     endpoints=[dict(addresses=['10.180.9.%d' % i]) for i in (1, 2, 3)],
                     ports=[dict(name='dns', port=5353, protocol='UDP'), dict(name='dns-tcp', port=5353),
                            dict(name='sctp', port=9999, protocol='SCTP')]))
    return objs


def test_every_rule_shape_reads_back_identically(node):
    """Every rule shape: after one sync, iptables-save of every chain equals what the module
    predicts (a second sync comparing with iptables-save finds nothing to do)."""
    objs = every_rule_shape()
    r = node.run(objects=objs, node_name='test-node', node_ip='192.168.0.2', cluster_cidr='10.0.0.0/8')
    assert r.changed and not r.failed, r.get('msg')
    r = node.run(objects=objs, node_name='test-node', node_ip='192.168.0.2', cluster_cidr='10.0.0.0/8',
                 resync='always', diff=True)
    assert not r.changed, r['diff']
    text = node.save()
    assert '-m statistic --mode random --probability 0.33333333349' in text
    assert '-p sctp' in text and '-p udp' in text
    node.assert_foreign_intact()


def test_nodeport_and_loadbalancer_source_ranges(node):
    """NodePort on the node's address reaches the backends (KUBE-NODEPORTS -> KUBE-EXT -> SVC);
    a LoadBalancer IP whose loadBalancerSourceRanges exclude the client is dropped (KUBE-FW ->
    KUBE-PROXY-FIREWALL), one that includes it is served."""
    ports = [dict(name='http', port=80, targetPort=8080, protocol='TCP', nodePort=30080)]
    np_svc = dict(kind='Service', metadata=dict(namespace='default', name='np'),
                  spec=dict(type='NodePort', clusterIP='10.96.0.40', ports=ports))
    lb_ports = [dict(name='http', port=80, targetPort=8080, protocol='TCP', nodePort=30081)]
    lb_in = dict(kind='Service', metadata=dict(namespace='default', name='lbin'),
                 spec=dict(type='LoadBalancer', clusterIP='10.96.0.41', ports=lb_ports,
                           loadBalancerSourceRanges=['192.168.77.0/24']),
                 status=dict(loadBalancer=dict(ingress=[dict(ip='10.96.1.1')])))
    lb_out = dict(kind='Service', metadata=dict(namespace='default', name='lbout'),
                  spec=dict(type='LoadBalancer', clusterIP='10.96.0.42',
                            ports=[dict(lb_ports[0], nodePort=30082)],
                            loadBalancerSourceRanges=['203.0.113.0/24']),
                  status=dict(loadBalancer=dict(ingress=[dict(ip='10.96.1.2')])))
    objs = [np_svc, slice_('np', ['10.244.0.11', '10.244.0.12']), lb_in, slice_('lbin', ['10.244.0.12']),
            lb_out, slice_('lbout', ['10.244.0.11'])]
    r = node.run(objects=objs)
    assert r.changed and not r.failed, r.get('msg')
    assert set(node.connect('192.168.77.1', 30080, 30)) == {'be1', 'be2'}
    assert set(node.connect('10.96.1.1', 80, 5)) == {'be2'}
    assert set(node.connect('10.96.1.2', 80, 2)) == {'timeout'}     # dropped by KUBE-PROXY-FIREWALL
    assert not node.run(objects=objs).changed


def run_unstreamed(node, **args):
    """The module's sync with streaming turned off (the batch handed over whole), in the node."""
    code = ('import json, sys\n'
            'from ansible_collections.barepod.linux.plugins.module_utils import _kpsync as kps\n'
            'print(json.dumps(kps.sync_service_rules(json.load(sys.stdin), stream=False)))\n')
    p = subprocess.run(['ip', 'netns', 'exec', node.node, sys.executable, '-c', code],
                       input=json.dumps(node.args(**args)),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False,
                       env=dict(os.environ, PYTHONPATH=COLLECTIONS_ROOT))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def owned_tables(node):
    from ansible_collections.barepod.linux.plugins.module_utils import _iptables
    tables = _iptables.parse_save(node.save(), tables=('filter', 'nat', 'mangle'))
    # (the canary's token is new with every first sync)
    return dict((t, dict((c, tables[t].rules.get(c, []) if c != 'KUBE-PROXY-CANARY' else 'canary')
                         for c in tables[t].chains)) for t in tables)


def test_streamed_first_sync_equals_the_unstreamed_one(legacy_node):
    """A first sync on iptables-legacy (no chain of ours in the nat table) streams its batch into
    iptables-restore while it renders, nat first. The kernel ends up with exactly the rules of
    the batch handed over whole, the result reports the same chains and facts, and the record it
    leaves is trusted by the next run."""
    node = legacy_node
    kw = dict(node_name='test-node', node_ip='192.168.0.2', cluster_cidr='10.0.0.0/8')
    objs = every_rule_shape()
    streamed = node.run(objects=objs, **kw)
    assert streamed.changed and not streamed.failed, streamed.get('msg')
    assert streamed['restore_payload'].startswith('*nat\n') and streamed['restores'] == 1
    after_streamed = owned_tables(node)
    again = node.run(objects=objs, **kw)
    assert not again.changed and again['sync'] == 'recorded' and again['restores'] == 0
    assert not node.run(state='absent', **kw).failed
    assert [c for t in owned_tables(node).values() for c in t if c.startswith('KUBE-')] == ['KUBE-SOMETHING-ELSE']
    whole = run_unstreamed(node, objects=objs, **kw)
    assert whole['changed'] and whole['restore_payload'].startswith('*filter\n')
    assert owned_tables(node) == after_streamed
    for k in ('services', 'endpoints', 'rules', 'large_cluster_mode', 'not_proxied', 'sync'):
        assert streamed[k] == whole[k], k
    for k, v in streamed['chains'].items():
        assert sorted(v) == sorted(whole['chains'][k]), k

    def lines(payload):
        return sorted(ln for ln in payload.splitlines() if 'PROXY-CANARY -m comment' not in ln)
    assert lines(streamed['restore_payload']) == lines(whole['restore_payload'])
    node.assert_foreign_intact()


def test_streamed_first_sync_that_fails_applies_nothing(legacy_node, tmp_path):
    """A broken rule before each COMMIT of a streamed first sync: iptables-restore rejects the nat
    table (the first), exits, and the kernel keeps exactly what it had - the filter table too."""
    node = legacy_node
    before = node.rules()
    broken = tmp_path / 'broken'
    broken.write_text('#!/bin/sh\nsed "s/^COMMIT$/-A KUBE-SERVICES -j NO-SUCH-CHAIN\\nCOMMIT/" | exec %s "$@"\n'
                      % node.restore_cmd)
    broken.chmod(0o755)
    r = node.run(objects=objects(), iptables_restore=str(broken))
    assert r.failed and 'iptables-restore failed' in r['msg'], r
    assert node.rules() == before
    r = node.run(objects=objects())
    assert r.changed and r['restore_payload'].startswith('*nat\n')
    assert set(node.connect(SVC_IP, 80, 20)) == {'be1', 'be2'}
    node.assert_foreign_intact()


def test_first_sync_streams_on_legacy_only(node):
    """iptables-nft-restore takes four times as long with the chain declarations in render order
    (63 s instead of 14.6 s at 10,000 Services): on nft the batch goes whole, declarations sorted."""
    r = node.run(objects=objects())
    first = r['restore_payload'].split('\n', 1)[0]
    assert first == ('*nat' if node.backend == 'legacy' else '*filter'), first
    decls = [ln for ln in r['restore_payload'].split('*nat\n', 1)[1].split('COMMIT')[0].splitlines()
             if ln.startswith(':')]
    if node.backend == 'nft':
        assert decls[2:] == sorted(decls[2:]), decls
