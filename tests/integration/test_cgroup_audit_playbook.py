"""playbooks/cgroup_audit.yml for real: ansible-playbook against an inventory of several local
hosts (ansible_connection=local), each pointing at a different tree:

  node-clean   FIXTURE v2 tree, one healthy Guaranteed pod        -> no violation
  node-leaky   FIXTURE v2 tree, a BestEffort pod and a leaked pod  -> violations
  node-v1      FIXTURE v1 tree (memory, cpu, cpuacct, pids dirs), limits above the node's memory
  node-real    this host's REAL cgroup tree, a pod made by cgroup_limit under a unique parent
  node-broken  a cgroup root with no cgroups                       -> "not audited"

Asserts the JSON and Markdown report contents and the failing gate.
"""
import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, run_module
from test_cgroup_limit import Scratch

ENV = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
           ANSIBLE_FORCE_COLOR='0', ANSIBLE_STDOUT_CALLBACK='default')
PLAYBOOK = os.path.join(REPO, 'playbooks', 'cgroup_audit.yml')
BIN = os.path.dirname(sys.executable)


def put(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)


def v2_cgroup(root, rel, memory_max='max', procs='', cpu_max='max 100000', weight='100'):
    d = os.path.join(root, rel)
    for name, text in (('memory.max', memory_max), ('memory.current', '4096'), ('memory.peak', '8192'),
                       ('memory.events', 'oom 0\noom_kill 0\n'), ('cpu.max', cpu_max), ('cpu.weight', weight),
                       ('cpu.stat', 'usage_usec 1\nnr_throttled 0\nthrottled_usec 0\n'), ('pids.max', 'max'),
                       ('pids.current', '1'), ('cgroup.procs', procs)):
        put(os.path.join(d, name), text + ('\n' if text and not text.endswith('\n') else ''))


def v1_cgroup(root, rel, limit, procs=''):
    put(os.path.join(root, 'memory', rel, 'memory.limit_in_bytes'), '%d\n' % limit)
    put(os.path.join(root, 'memory', rel, 'memory.usage_in_bytes'), '4096\n')
    put(os.path.join(root, 'memory', rel, 'cgroup.procs'), procs)
    put(os.path.join(root, 'cpu', rel, 'cpu.shares'), '1024\n')
    put(os.path.join(root, 'cpu', rel, 'cpu.cfs_quota_us'), '-1\n')
    put(os.path.join(root, 'cpuacct', rel, 'cpuacct.usage'), '1000\n')
    put(os.path.join(root, 'pids', rel, 'pids.max'), 'max\n')


@pytest.fixture
def fleet(tmp_path):
    scratch = Scratch()
    try:
        clean = str(tmp_path / 'clean')
        put(os.path.join(clean, 'cgroup.controllers'), 'cpu memory pids\n')
        v2_cgroup(clean, 'kubepods')
        v2_cgroup(clean, 'kubepods/podg1', memory_max=str(1 << 30))
        v2_cgroup(clean, 'kubepods/podg1/app', memory_max=str(1 << 30), procs='100\n')
        leaky = str(tmp_path / 'leaky')
        put(os.path.join(leaky, 'cgroup.controllers'), 'cpu memory pids\n')
        v2_cgroup(leaky, 'kubepods')
        v2_cgroup(leaky, 'kubepods/besteffort/podbe1', procs='200\n')
        v2_cgroup(leaky, 'kubepods/burstable/podleak1', memory_max=str(1 << 28))
        v1 = str(tmp_path / 'v1')
        v1_cgroup(v1, 'kubepods', 9223372036854771712)
        v1_cgroup(v1, 'kubepods/podbig', 3 << 30, procs='300\n')
        broken = str(tmp_path / 'broken')
        os.makedirs(broken)
        put(str(tmp_path / 'mountinfo-nocgroup'), '22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n')
        # a real pod on this host, Guaranteed, with a process, under a unique parent
        sleeper = scratch.spawn(['sleep', '120'])
        r = run_module('cgroup_limit', dict(pod_uid='real1', parent=scratch.parent, pids=[sleeper.pid], containers=[
            {'name': 'c', 'resources': {'limits': {'memory': '64Mi', 'cpu': '100m'}}}]))
        assert not r.failed, r.get('msg')
        local = {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}
        inv = {'all': {'hosts': {
            'node-clean': dict(local, cgroup_audit_cgroup_root=clean, cgroup_audit_hierarchy='v2',
                               cgroup_audit_node_memory='4Gi'),
            'node-leaky': dict(local, cgroup_audit_cgroup_root=leaky, cgroup_audit_hierarchy='v2',
                               cgroup_audit_node_memory='4Gi'),
            'node-v1': dict(local, cgroup_audit_cgroup_root=v1, cgroup_audit_hierarchy='v1',
                            cgroup_audit_node_memory='2Gi'),
            'node-real': dict(local, cgroup_audit_path=scratch.parent),
            'node-broken': dict(local, cgroup_audit_cgroup_root=broken,
                                cgroup_audit_mountinfo=str(tmp_path / 'mountinfo-nocgroup')),
        }}}
        inv_path = str(tmp_path / 'inventory.yml')
        with open(inv_path, 'w') as f:
            yaml.safe_dump(inv, f)
        yield inv_path, str(tmp_path / 'report'), scratch
    finally:
        scratch.cleanup()


def play(inv, report, *extra):
    cmd = [os.path.join(BIN, 'ansible-playbook'), '-i', inv, PLAYBOOK, '-f', '10',
           '-e', 'cgroup_audit_report_dir=%s' % report] + list(extra)
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=REPO, timeout=300)


def test_fleet_report_and_gate(fleet):
    inv, report, scratch = fleet
    p = play(inv, report)
    out = p.stdout.decode()
    assert p.returncode == 0, out
    data = json.load(open(os.path.join(report, 'cgroup_audit.json')))
    nodes = {n['node']: n for n in data['nodes']}
    assert sorted(nodes) == ['node-broken', 'node-clean', 'node-leaky', 'node-real', 'node-v1']
    assert nodes['node-clean']['violations'] == [] and nodes['node-clean']['summary']['pods'] == 1
    leaky = sorted((v['reason'], v['path']) for v in nodes['node-leaky']['violations'])
    assert leaky == [('empty_pod_cgroup', 'kubepods/burstable/podleak1'),
                     ('no_memory_limit', 'kubepods/besteffort/podbe1')]
    assert [v['reason'] for v in nodes['node-v1']['violations']] == ['pod_limits_exceed_node_memory']
    assert nodes['node-v1']['mode'] == 'v1'
    real = nodes['node-real']
    assert real['mode'] == 'hybrid' and real['summary']['pods'] == 1 and real['violations'] == []
    assert real['summary']['memory_limits_total'] == 64 << 20
    assert nodes['node-broken']['failed'] and 'no cgroup or cgroup2 mount' in nodes['node-broken']['error']
    assert data['totals'] == {'nodes': 5, 'failed_nodes': 1, 'pods': 5, 'violations': 3, 'nodes_with_violations': 2}
    md = open(os.path.join(report, 'cgroup_audit.md')).read()
    assert '| node-clean | v2 `kubepods` | 3 | 1 | 1 | 0 | 1.00 GB | 4.00 GB | 25% | 0 |' in md, md
    assert '| node-leaky |' in md and '| node-broken | - | - |' in md
    assert '### node-leaky: empty_pod_cgroup - `kubepods/burstable/podleak1`' in md
    assert '### node-v1: pod_limits_exceed_node_memory - `kubepods`' in md
    html = open(os.path.join(report, 'cgroup_audit.html')).read()
    assert '<td>node-leaky</td>' in html
    # the gate: violations fail the play
    p = play(inv, report, '-e', 'cgroup_audit_fail_on_violations=true')
    out = p.stdout.decode()
    assert p.returncode != 0 and 'cgroup audit: 3 violation(s) on 2 node(s)' in out, out
    # a clean subset passes the gate
    p = play(inv, report, '-e', 'cgroup_audit_fail_on_violations=true', '--limit', 'node-clean,node-real')
    assert p.returncode == 0, p.stdout.decode()
    assert json.load(open(os.path.join(report, 'cgroup_audit.json')))['totals']['violations'] == 0
