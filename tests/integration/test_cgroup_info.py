"""cgroup_info on this host's REAL cgroup v1 tree (below a uniquely named parent, removed afterwards):
limits, usage, a real OOM kill counted in the events, process counts and policy violations."""
import os
import subprocess
import sys

import pytest

from conftest import run_module
from test_cgroup_limit import Scratch, hierarchies


@pytest.fixture
def scratch():
    with Scratch() as s:
        yield s


def test_audit_real_v1_tree(scratch):
    P = scratch.parent
    guaranteed = [{'name': 'app', 'resources': {'limits': {'memory': '64Mi', 'cpu': '500m'}}}]
    sleeper = scratch.spawn(['sleep', '60'])
    for a in (dict(pod_uid='g1', containers=guaranteed),
              dict(pod_uid='g1', containers=guaranteed, container='app', pids=[sleeper.pid]),
              dict(pod_uid='leak', containers=[{'name': 'x', 'resources': {'requests': {'memory': '10Mi'}}}]),
              dict(pod_uid='oom', memory_limit='16Mi', containers=[{'name': 'x', 'resources': {
                  'requests': {'cpu': '100m'}, 'limits': {'memory': '16Mi'}}}]),
              dict(pod_uid='cpu', containers=[{'name': 'x', 'resources': {
                  'requests': {'cpu': '1m', 'memory': '1Mi'}, 'limits': {'cpu': '500m', 'memory': '1Gi'}}}])):
        r = run_module('cgroup_limit', dict(a, parent=P))
        assert not r.failed, r.get('msg')
    # a real OOM kill inside the 16Mi pod
    oomdir = scratch.path('memory', 'burstable', 'podoom')

    def join():
        with open(os.path.join(oomdir, 'cgroup.procs'), 'w') as f:
            f.write(str(os.getpid()))
    hog = scratch.spawn([sys.executable, '-c', 'b = bytearray(256 << 20); b[::4096] = b"x" * (len(b) // 4096)'],
                        preexec_fn=join, stderr=subprocess.DEVNULL)
    assert hog.wait(timeout=30) == -9
    # the cpu pod keeps a process so it is not reported as empty
    keeper = scratch.spawn(['sleep', '60'])
    assert not run_module('cgroup_limit', dict(pod_uid='cpu', parent=P, pids=[keeper.pid], containers=[
        {'name': 'x', 'resources': {'requests': {'cpu': '1m', 'memory': '1Mi'},
                                    'limits': {'cpu': '500m', 'memory': '1Gi'}}}])).failed

    r = run_module('cgroup_info', dict(path=P, node_memory='1Gi', memory_limit_ceiling='512Mi', report='all'))
    assert not r.failed, r.get('msg')
    assert r['hierarchy']['mode'] == 'hybrid'
    by = {c['path']: c for c in r['cgroups']}
    g1 = by['%s/podg1' % P]
    app = by['%s/podg1/app' % P]
    assert g1['qos_class'] == 'Guaranteed' and g1['limits']['memory'] == 64 << 20
    assert g1['limits']['cpu_shares'] == 512 and g1['limits']['cpu_quota'] == 50000
    assert app['procs'] == 1 and app['container'] == 'app' and app['usage']['memory_current'] is not None
    assert app['usage']['pids_current'] == 1
    oom = by['%s/burstable/podoom' % P]
    assert oom['events']['oom_kill'] >= 1 and oom['events']['failcnt'] > 0
    assert oom['usage']['memory_peak'] >= 15 << 20
    s = r['summary']
    assert s['pods'] == 4 and s['memory_limited'] == 3 and s['memory_unlimited'] == 1
    assert s['memory_limits_total'] == (64 << 20) + (16 << 20) + (1 << 30)
    assert s['oom_kills'] >= 1
    reasons = sorted((v['reason'], v['path']) for v in r['violations'])
    assert ('no_memory_limit', '%s/burstable/podleak' % P) in reasons
    assert ('empty_pod_cgroup', '%s/burstable/podleak' % P) in reasons
    assert ('empty_pod_cgroup', '%s/burstable/podoom' % P) in reasons
    assert ('memory_limit_above_ceiling', '%s/burstable/podcpu' % P) in reasons
    assert ('pod_limits_exceed_node_memory', P) in reasons
    # shares at the minimum (1m -> 2 shares) while a quota is set
    assert ('cpu_limit_without_request', '%s/burstable/podcpu' % P) in reasons
    assert not any(v['path'].startswith('%s/podg1' % P) for v in r['violations'])
    # a subtree
    r = run_module('cgroup_info', dict(path=P + '/burstable', node_memory='1Gi', report='pods'))
    assert r['summary']['pods'] == 3


def test_audit_bad_input_and_missing_subtree(scratch):
    r = run_module('cgroup_info', dict(path='../etc'))
    assert r.failed and 'path' in r['msg']
    r = run_module('cgroup_info', dict(path=scratch.parent, memory_limit_ceiling='1.5.3'))
    assert r.failed and 'memory_limit_ceiling' in r['msg']
    r = run_module('cgroup_info', dict(path=scratch.parent))
    assert not r.failed and r['exists'] is False and r['violations'] == []
    for h in hierarchies():
        assert not os.path.exists(os.path.join(h, scratch.parent))
