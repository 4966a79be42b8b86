"""Teardown (issue 7, CNI DEL semantics): twice; after the sandbox was killed from outside; after
the netns was deleted by hand; after the pod record was deleted; after a simulated reboot. Each
succeeds and leaves the node exactly at its baseline; a second teardown changes nothing.

Bring-up goes through the in-process driver (the role's modules, same parameters); teardown
through the same driver, and after the reboot through ansible-playbook pod_down (pod_ipam_gc).
"""
import os
import shutil
import signal
import subprocess

import pytest

from test_faults import victim_up, warm_up


def kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def perturb_nothing(node, rec):
    pass


def perturb_sandbox_killed(node, rec):
    kill(rec['sandbox']['pid'])
    for c in rec['containers'].values():
        kill(c['pid'])


def perturb_netns_deleted(node, rec):
    path = rec['sandbox']['netns_path']
    subprocess.run(['umount', '-l', path], check=True)
    os.unlink(path)


def perturb_record_deleted(node, rec):
    shutil.rmtree(os.path.join(node.vars['pod_state_root'], 'default_' + rec['name']))


def reboot(node):
    """What a reboot leaves: no processes, no mounts or netns files, no pod cgroups, no pod
    records (/run is a tmpfs); the IPAM files, rootfs dirs and logs (/var) stay, and so do the
    node's iptables rules (persisted, as iptables-persistent would)."""
    node.kill_all()
    for mp in sorted(node.mounts(), key=len, reverse=True):
        if mp != node.vars['pod_netns_dir']:
            subprocess.run(['umount', '-l', mp], check=True)
    for name in os.listdir(node.vars['pod_netns_dir']):
        os.unlink(os.path.join(node.vars['pod_netns_dir'], name))
    for c in sorted(node.pod_cgroups(), key=len, reverse=True):
        for d, _dirs, _files in sorted(os.walk(os.path.join('/sys/fs/cgroup', c)), key=lambda x: len(x[0]), reverse=True):
            os.rmdir(d)
    for name in os.listdir(node.vars['pod_state_root']):
        shutil.rmtree(os.path.join(node.vars['pod_state_root'], name))


CASES = dict(twice=perturb_nothing, sandbox_killed=perturb_sandbox_killed, netns_deleted=perturb_netns_deleted,
             record_deleted=perturb_record_deleted)


@pytest.mark.parametrize('case', sorted(CASES))
def test_teardown(node, worker, reliability_log, case):
    baseline, m, rec = victim_up(node, worker)
    CASES[case](node, rec)
    r = worker(node, 'down', [m])
    assert not r.get('failed'), r
    assert node.snapshot() == baseline
    again = worker(node, 'down', [m])['results'][0]
    assert again['changed'] == [], again
    assert node.snapshot() == baseline
    reliability_log('fault', 'teardown: %s' % case.replace('_', ' '), 'survived', leaks=0)


def test_teardown_after_reboot_with_gc(node, worker, reliability_log):
    """After a reboot the pod is torn down through the role (pod_ipam_gc): nothing is left; and a
    pod nobody tears down any more has its address and masquerade chain reclaimed by the GC of
    another pod's teardown."""
    baseline = warm_up(node, worker)
    known, forgotten = node.manifest_dict('known'), node.manifest_dict('forgotten')
    worker(node, 'up', [known, forgotten])
    assert len(node.ipam_files()) == 2
    reboot(node)
    snap = node.snapshot()
    assert snap['processes'] == [] and snap['records'] == [] and len(snap['ipam']) == 2
    reliability_log('fault', 'teardown after a simulated reboot (GC of addresses and chains)', 'injected', ipam=snap['ipam'])
    f = node.manifest('known')
    stats = node.down([f], pod_ipam_gc=True)[0]
    assert stats['failures'] == 0
    left = node.snapshot()
    # the forgotten pod's address and chain were garbage collected; only its rootfs/log dirs
    # on disk (/var) remain, which no teardown of another pod may touch
    assert left['ipam'] == [] and left['chains'] == baseline['chains'], left
    assert dict(left, rootfs=[], logs=[]) == dict(baseline, rootfs=[], logs=[])
    worker(node, 'down', [forgotten])
    assert node.snapshot() == baseline
    stats = node.down([f], pod_ipam_gc=True)[0]
    assert stats['changed'] == 0, stats
    reliability_log('fault', 'teardown after a simulated reboot (GC of addresses and chains)', 'survived', leaks=0)
