"""Faults (issue 7): kill -9 at each step of pod bring-up, and injected failures.

Kill: the pod role runs through ansible-playbook with BAREPOD_FAILPOINTS=<step>=kill; the
module dies at that step (SIGKILL, no cleanup), the play fails. Converging again must end with
exactly one sandbox, one container, one veth, one address, one masquerade chain, one cgroup tree
and one record; a third run changes nothing; teardown returns the node to its baseline.
"""
import os

import pytest

from _node import converged_exactly_once

STEPS = ['rootfs-before-mounts', 'sandbox-before-record', 'cgroup-before-limits', 'ipam-after-reserve',
         'veth-before-address']


def warm_up(node, worker):
    """Node-level things the first pod creates and the last one keeps (bridge, QoS cgroups,
    IPAM dir): made once, so the baseline is what every teardown must return to."""
    m = node.manifest_dict('warm-up')
    worker(node, 'up', [m])
    worker(node, 'down', [m])
    return node.snapshot()


@pytest.mark.parametrize('step', STEPS)
def test_kill_at_step_then_converge(node, worker, reliability_log, step):
    baseline = warm_up(node, worker)
    f = node.manifest('victim')
    rc, _stats, _res, failures = node.playbook('pod_up.yml', [f], failpoints=step + '=kill')
    assert rc != 0 and failures, 'the failpoint %s did not fire' % step
    reliability_log('fault', 'kill -9 at %s (ansible-playbook pod_up)' % step, 'injected',
                    task=failures[0]['task'])
    stats, _ = node.up([f])
    rec, _snap = converged_exactly_once(node, 'victim', baseline)
    stats2, _ = node.up([f])
    assert stats2['changed'] == 0, stats2
    node.down([f])
    after = node.snapshot()
    assert after == baseline
    reliability_log('fault', 'kill -9 at %s (ansible-playbook pod_up)' % step, 'survived',
                    converged_changed=stats['changed'], leaks=0)
