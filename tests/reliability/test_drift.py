"""Drift (issue 7): a KUBE-SEP rule, a veth, a cgroup limit or a container process removed out
of band. Check mode reports each drift (changed, nothing touched); converging repairs it; the
run after that changes nothing."""
import os
import shlex
import signal
import time
import subprocess

import pytest
import yaml

from _node import REPO, converged_exactly_once, run_module_in
from test_faults import victim_up


def drift_veth(node, rec):
    subprocess.run(['ip', '-n', node.netns, 'link', 'del', rec['network']['host_ifname']], check=True)
    return 'network'


def drift_cgroup_limit(node, rec):
    path = os.path.join(rec['cgroups']['paths']['memory'], 'memory.limit_in_bytes')
    with open(path, 'w') as f:
        f.write('-1')
    return 'cgroup'


def drift_container_killed(node, rec):
    [c] = rec['containers'].values()
    os.kill(c['pid'], signal.SIGKILL)
    # SIGKILL is asynchronous: a PID 1 tearing down its pid namespace is still in /proc for a moment,
    # so wait until it is gone (or a zombie) before the drifted state is snapshotted
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with open('/proc/%d/stat' % c['pid']) as f:
                if f.read().rsplit(')', 1)[1].split()[0] in ('Z', 'X'):
                    break
        except OSError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError('container pid %d still alive 15 s after SIGKILL' % c['pid'])
    return 'containers'


DRIFTS = dict(veth=drift_veth, cgroup_limit=drift_cgroup_limit, container_killed=drift_container_killed)


@pytest.mark.parametrize('what', sorted(DRIFTS))
def test_pod_drift_reported_and_repaired(node, worker, reliability_log, what):
    baseline, m, rec = victim_up(node, worker)
    step = DRIFTS[what](node, rec)
    drifted = node.snapshot()
    r = worker(node, 'up', [m], check=True)['results'][0]
    assert step in r['changed'], r
    assert node.snapshot() == drifted  # check mode touched nothing
    reliability_log('fault', 'drift: %s' % what.replace('_', ' '), 'detected', reported=r['changed'])
    r = worker(node, 'up', [m])['results'][0]
    assert step in r['changed'], r
    rec2 = converged_exactly_once(node, 'victim', baseline)[0]
    if what == 'cgroup_limit':
        with open(os.path.join(rec2['cgroups']['paths']['memory'], 'memory.limit_in_bytes')) as f:
            assert int(f.read()) == 200 * 1024 * 1024
    assert worker(node, 'up', [m])['results'][0]['changed'] == []
    assert worker(node, 'up', [m], check=True)['results'][0]['changed'] == []
    worker(node, 'down', [m])
    assert node.snapshot() == baseline
    reliability_log('fault', 'drift: %s' % what.replace('_', ' '), 'survived', leaks=0)


def kube_dns(endpoints=True):
    with open(os.path.join(REPO, 'examples', 'kube-dns-service.yaml')) as f:
        objs = list(yaml.safe_load_all(f))
    if not endpoints:
        for o in objs:
            if o['kind'] == 'EndpointSlice':
                o['endpoints'] = []
    return objs


def svc_args(node, objects, **kw):
    a = dict(objects=objects, cluster_cidr='10.244.0.0/16', node_name='node', return_payload=False, backend='nft',
             state_dir=os.path.join(node.tmp, 'svc-state'))
    a.update(kw)
    return a


def test_kube_sep_rule_deleted(node, reliability_log):
    """A DNAT rule of a KUBE-SEP chain deleted by hand. The trusted sync record (resync=auto, like
    kube-proxy between full syncs) does not look inside chains; resync=always (and --diff) compares
    with iptables-save: check mode reports the drift, converging repairs it."""
    r = run_module_in(node, 'kube_svc_rules', svc_args(node, kube_dns()))
    assert r['_rc'] == 0 and r['changed'], r
    before = node.rules('nat')
    sep = [ln for ln in before if ln.startswith('-A KUBE-SEP-') and '-j DNAT' in ln][0]
    subprocess.run(['ip', 'netns', 'exec', node.netns, 'iptables-nft', '-t', 'nat'] + shlex.split(sep.replace('-A ', '-D ', 1)),
                   check=True)
    drifted = node.rules('nat')
    assert sep not in drifted
    r = run_module_in(node, 'kube_svc_rules', svc_args(node, kube_dns(), resync='always'), check=True)
    assert r['_rc'] == 0 and r['changed'], r
    assert node.rules('nat') == drifted
    reliability_log('fault', 'drift: KUBE-SEP rule deleted', 'detected', chains=r['chains'])
    r = run_module_in(node, 'kube_svc_rules', svc_args(node, kube_dns(), resync='always'))
    assert r['_rc'] == 0 and r['changed'], r
    assert node.rules('nat') == before
    r = run_module_in(node, 'kube_svc_rules', svc_args(node, kube_dns(), resync='always'))
    assert not r['changed'], r
    run_module_in(node, 'kube_svc_rules', svc_args(node, [], state='absent'))
    reliability_log('fault', 'drift: KUBE-SEP rule deleted', 'survived')
