# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/service through playbooks/services.yml, for real, inside throwaway network namespaces.

Pods are fabricated as pod records (what the pod role leaves behind: sandbox/containers with live
pids, network.ip, the manifest with labels and ports) under temporary state roots, one per "node".

- one node: `ip netns exec <ns> ansible-playbook` (ansible_connection=local): iptables-save inside the
  netns shows KUBE-SVC -> KUBE-SEP with the 0.5 probability and the DNATs to the pods' IP:port
  (the named targetPort resolved), a second run changes nothing, check mode changes nothing,
  absent removes the chains;
- two nodes: two hosts (ansible_connection=local) each running its modules in its own netns (the
  interpreter is `ip netns exec <ns> python`) with its own state root: the endpoints are gathered
  from both nodes and both nodes get the rules for both pods.
"""
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from harness import sh

from ansible_collections.barepod.linux.plugins.module_utils._common import pid_starttime
from ansible_collections.barepod.linux.plugins.module_utils._podstatus import manifest_summary
from ansible_collections.barepod.linux.plugins.module_utils._state import PodRecord

PLAYBOOK = os.path.join(REPO, 'playbooks', 'services.yml')
DEMO_SERVICE = os.path.join(REPO, 'examples', 'demo-service.yaml')
BACKEND = 'nft'
ENV = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
           ANSIBLE_FORCE_COLOR='0', ANSIBLE_STDOUT_CALLBACK='default')
ENV['PATH'] = os.path.dirname(sys.executable) + os.pathsep + ENV.get('PATH', '')


def fabricate_pod(state_root, name, ip, namespace='default', labels=None, ready=True, uid=None):
    """A pod record as the pod role leaves it (the demo pod's manifest, this process as its pids)."""
    pid = os.getpid()
    alive = dict(pid=pid if ready else 2 ** 22 + 1, starttime=pid_starttime(pid),
                 started_at='2026-11-26T00:00:00Z')
    manifest = dict(apiVersion='v1', kind='Pod',
                    metadata=dict(name=name, namespace=namespace,
                                  labels={'app': 'my-example-app'} if labels is None else labels),
                    spec=dict(containers=[dict(name='any-old-name-will-do', image='docker.io/busybox:latest',
                                               ports=[dict(name='webapp-port', containerPort=80, protocol='TCP'),
                                                      dict(name='dns-tcp', containerPort=53, protocol='TCP')])]))
    rec = PodRecord(namespace, name, state_root)
    rec.update('sandbox', dict(alive, namespaces=['ipc', 'net', 'pid', 'uts']), uid=uid or 'uid-%s' % name)
    rec.update('containers', {'any-old-name-will-do': dict(alive)})
    rec.update('network', dict(ip=ip))
    rec.update('manifest', manifest_summary(manifest))


def write_inventory(path, hosts):
    with open(path, 'w') as f:
        yaml.safe_dump({'nodes': {'hosts': hosts}}, f)


def run_playbook(inventory, extra, netns=None, check=False, expect_fail=False):
    argv = ['ansible-playbook', '-i', inventory, PLAYBOOK, '-e', yaml.safe_dump(extra, default_flow_style=True)]
    if check:
        argv.append('--check')
    if netns:
        argv = ['ip', 'netns', 'exec', netns] + argv
    p = subprocess.run(argv, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=300)
    if expect_fail:
        assert p.returncode != 0, p.stdout
        return p.stdout, {}
    assert p.returncode == 0, p.stdout
    recap = dict((m.group(1), dict(ok=int(m.group(2)), changed=int(m.group(3)), failed=int(m.group(4))))
                 for m in re.finditer(r'^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)',
                                      p.stdout, re.M))
    return p.stdout, recap


def iptables_save(netns):
    out = subprocess.run(['ip', 'netns', 'exec', netns, 'iptables-%s-save' % BACKEND, '-t', 'nat'],
                          check=True, stdout=subprocess.PIPE, text=True).stdout
    return ''.join(ln for ln in out.splitlines(True) if not ln.startswith('#'))


def svc_rules(saved, prefix='KUBE'):
    """{svc chain: [rules]} for the demo Service's chains and the DNATs of its endpoint chains."""
    lines = [ln for ln in saved.splitlines() if ln.startswith('-A ')]
    svc = [ln for ln in lines if ln.startswith('-A %s-SVC-' % prefix)]
    dnat = sorted(re.search(r'--to-destination (\S+)', ln).group(1)
                  for ln in lines if ln.startswith('-A %s-SEP-' % prefix) and 'DNAT' in ln)
    return svc, dnat


@pytest.fixture
def node(netns, tmp_path):
    ns = netns('bpsvc')
    subprocess.run(['ip', '-n', ns, 'link', 'set', 'lo', 'up'], check=True)
    inv = str(tmp_path / 'inventory.yml')
    root = str(tmp_path / 'pods')
    write_inventory(inv, {'node-a': {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
                                     'service_state_root': root,
                                     'service_rules_state_dir': str(tmp_path / 'kp'),
                                     'service_backend': BACKEND}})
    return ns, inv, root


def test_one_node_demo_service_two_pods_converge_idempotent_absent(node):
    ns, inv, root = node
    fabricate_pod(root, 'core-k8s', '10.244.0.2')
    fabricate_pod(root, 'core-k8s-2', '10.244.0.3')
    fabricate_pod(root, 'other', '10.244.0.4', labels={'app': 'other'})
    fabricate_pod(root, 'notready', '10.244.0.5', ready=False)
    extra = {'service_files': [DEMO_SERVICE]}

    out, recap = run_playbook(inv, extra, netns=ns, check=True)
    assert recap['node-a']['changed'] == 1, out
    assert 'KUBE-SVC' not in iptables_save(ns), 'check mode wrote rules'

    out, recap = run_playbook(inv, extra, netns=ns)
    assert recap['node-a']['changed'] == 1, out
    saved = iptables_save(ns)
    svc, dnat = svc_rules(saved)
    # both ports (dns UDP, dns-tcp TCP -> the named container port 53), two ready pods each
    assert dnat == ['10.244.0.2:53', '10.244.0.2:53', '10.244.0.3:53', '10.244.0.3:53'], saved
    probs = [ln for ln in svc if '--probability 0.50000000000' in ln]
    assert len(probs) == 2, saved
    assert any('kube-dns:dns-tcp -> 10.244.0.2:53' in ln for ln in svc), saved
    assert '-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/kube-dns:dns-tcp cluster IP"' \
        in saved, saved
    assert '10.244.0.4' not in saved and '10.244.0.5' not in saved

    out, recap = run_playbook(inv, extra, netns=ns)
    assert recap['node-a']['changed'] == 0, out
    assert iptables_save(ns) == saved

    # a pod goes away: the slices follow, one endpoint left, no probability
    PodRecord('default', 'core-k8s-2', root).remove()
    out, recap = run_playbook(inv, extra, netns=ns)
    assert recap['node-a']['changed'] == 1, out
    svc, dnat = svc_rules(iptables_save(ns))
    assert dnat == ['10.244.0.2:53', '10.244.0.2:53']
    assert not any('probability' in ln for ln in svc)

    out, recap = run_playbook(inv, {'service_state': 'absent'}, netns=ns)
    assert recap['node-a']['changed'] == 1, out
    saved = iptables_save(ns)
    assert 'KUBE-SVC' not in saved and 'KUBE-SEP' not in saved and 'KUBE-SERVICES' not in saved, saved
    out, recap = run_playbook(inv, {'service_state': 'absent'}, netns=ns)
    assert recap['node-a']['changed'] == 0, out


def test_chain_prefix_and_bad_service_fails_before_any_change(node, tmp_path):
    ns, inv, root = node
    fabricate_pod(root, 'core-k8s', '10.244.0.2')
    with open(DEMO_SERVICE) as f:
        service = yaml.safe_load(f)
    # the node fact barepod_chain_prefix (set by kind_cluster's detect on a real cluster's node) is the default
    with open(inv) as f:
        hosts = yaml.safe_load(f)['nodes']['hosts']
    hosts['node-a']['barepod_chain_prefix'] = 'BPOD'
    write_inventory(inv, hosts)
    out, recap = run_playbook(inv, {'service_manifests': [service]}, netns=ns)
    assert recap['node-a']['changed'] == 1, out
    saved = iptables_save(ns)
    assert '-A BPOD-SERVICES' in saved and 'KUBE-' not in saved, saved
    bad = dict(service, metadata=dict(name='nocip', namespace='default'),
               spec=dict((k, v) for k, v in service['spec'].items() if k not in ('clusterIP', 'clusterIPs')))
    out, _ = run_playbook(inv, {'service_manifests': [service, bad], 'service_chain_prefix': 'BPOD'},
                          netns=ns, expect_fail=True)
    assert 'spec.clusterIP' in out and 'default/nocip' in out, out
    assert iptables_save(ns) == saved
    run_playbook(inv, {'service_state': 'absent', 'service_chain_prefix': 'BPOD'}, netns=ns)
    assert 'BPOD-' not in iptables_save(ns)


def test_two_nodes_endpoints_gathered_across_nodes(netns, tmp_path):
    hosts = {}
    nets = {}
    for n, ip in (('node-a', '10.244.1.2'), ('node-b', '10.244.2.2')):
        ns = netns('bpsvc')
        nets[n] = ns
        wrapper = str(tmp_path / ('python-' + n))
        with open(wrapper, 'w') as f:
            f.write('#!/bin/sh\nexec ip netns exec %s %s "$@"\n' % (ns, sys.executable))
        os.chmod(wrapper, 0o755)
        root = str(tmp_path / n / 'pods')
        fabricate_pod(root, 'pod-on-' + n, ip)
        hosts[n] = {'ansible_connection': 'local', 'ansible_python_interpreter': wrapper,
                    'service_state_root': root, 'service_rules_state_dir': str(tmp_path / n / 'kp'),
                    'service_backend': BACKEND}
    inv = str(tmp_path / 'inventory.yml')
    write_inventory(inv, hosts)
    extra = {'service_files': [DEMO_SERVICE]}

    out, recap = run_playbook(inv, extra)
    assert recap['node-a']['changed'] == 1 and recap['node-b']['changed'] == 1, out
    for n, ns in nets.items():
        saved = iptables_save(ns)
        svc, dnat = svc_rules(saved)
        assert dnat == ['10.244.1.2:53', '10.244.1.2:53', '10.244.2.2:53', '10.244.2.2:53'], (n, saved)
        assert len([ln for ln in svc if '--probability 0.50000000000' in ln]) == 2, (n, saved)
    out, recap = run_playbook(inv, extra)
    assert recap['node-a']['changed'] == 0 and recap['node-b']['changed'] == 0, out

    out, recap = run_playbook(inv, {'service_state': 'absent'})
    assert recap['node-a']['changed'] == 1 and recap['node-b']['changed'] == 1, out
    for ns in nets.values():
        assert 'KUBE-SVC' not in iptables_save(ns)


def test_bad_input_fails_clearly_before_any_change(node):
    ns, inv, root = node
    fabricate_pod(root, 'core-k8s', '10.244.0.2')
    with open(DEMO_SERVICE) as f:
        service = yaml.safe_load(f)
    nokind = dict((k, v) for k, v in service.items() if k != 'kind')
    out, _ = run_playbook(inv, {'service_manifests': [nokind]}, netns=ns, expect_fail=True)
    assert 'objects without a kind' in out and 'kube-dns' in out, out
    out, _ = run_playbook(inv, {'service_manifests': [service], 'service_endpoint_hosts': ['node-a', 'ghost']},
                          netns=ns, expect_fail=True)
    assert 'service_endpoint_hosts: ghost did not list their pods' in out, out
    assert 'KUBE-' not in iptables_save(ns)


SERVER = r'''
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 53))
s.listen(8)
print('listening', flush=True)
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[1].encode())
    c.close()
'''

CLIENT = r'''
import socket, sys
s = socket.create_connection((sys.argv[1], 53), timeout=3)
print(s.recv(64).decode())
'''


def test_cluster_ip_reaches_the_pod(node, netns):
    """Real traffic: the node connects to the demo Service's ClusterIP 10.96.0.10:53 and the pod answers."""
    ns, inv, root = node
    pod_ns = netns('bpsvcpod')

    sh('ip', '-n', ns, 'link', 'add', 'vpod', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pod_ns)
    sh('ip', '-n', ns, 'addr', 'add', '10.244.0.1/24', 'dev', 'vpod')
    sh('ip', '-n', ns, 'link', 'set', 'vpod', 'up')
    sh('ip', '-n', ns, 'route', 'add', 'default', 'dev', 'vpod')   # a route for the ClusterIP, as on a node
    sh('ip', '-n', pod_ns, 'addr', 'add', '10.244.0.2/24', 'dev', 'eth0')
    sh('ip', '-n', pod_ns, 'link', 'set', 'eth0', 'up')
    sh('ip', '-n', pod_ns, 'link', 'set', 'lo', 'up')
    sh('ip', '-n', pod_ns, 'route', 'add', 'default', 'via', '10.244.0.1')
    server = subprocess.Popen(['ip', 'netns', 'exec', pod_ns, sys.executable, '-c', SERVER, 'core-k8s'],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == 'listening'
        fabricate_pod(root, 'core-k8s', '10.244.0.2')
        out, recap = run_playbook(inv, {'service_files': [DEMO_SERVICE]}, netns=ns)
        assert recap['node-a']['changed'] == 1, out
        got = subprocess.run(['ip', 'netns', 'exec', ns, sys.executable, '-c', CLIENT, '10.96.0.10'],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
        assert got.stdout.strip() == 'core-k8s', got.stdout
    finally:
        server.kill()
        server.wait()
