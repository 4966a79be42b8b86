"""Leaks (issue 7): bring-up/teardown cycles of the chapter's pods (core-k8s with its hostPath
volume and memory limit, and core-k8s-greedy, taking turns) through the role's modules in one
process, next to a long-lived pod that is re-converged every cycle. Afterwards processes, mounts, network
namespaces, veths, IPAM files, iptables chains, cgroups and pod records are exactly the baseline
taken before; the long-lived pod's pause process and the driving process hold as many open fds
as at the start.

Cycles: $BAREPOD_SOAK_CYCLES (default 100).
"""
import os
import statistics

import yaml

from _node import REPO
from test_faults import warm_up

CYCLES = int(os.environ.get('BAREPOD_SOAK_CYCLES', '100'))


def test_soak(node, worker, reliability_log):
    baseline = warm_up(node, worker)
    core = node.manifest_dict('core-k8s')
    with open(os.path.join(REPO, 'examples', 'greedy-pod.yaml')) as f:
        greedy = yaml.safe_load(f)
    long_lived = node.manifest_dict('long-lived')
    # grace 0: sleep as PID 1 ignores SIGTERM, a grace period would only add waiting per teardown
    r = worker(node, 'soak', [core, greedy], long_lived=long_lived, cycles=CYCLES, timeout=3600,
               vars_=dict(pod_grace_period=0))
    assert not r.get('failed'), r
    after = node.snapshot()
    for key in sorted(baseline):
        reliability_log('leak', key, 'clean' if after[key] == baseline[key] else 'LEAKED',
                        before=len(baseline[key]), after=len(after[key]), cycles=CYCLES)
    fds, wfds = r['pause_fds'], r['worker_fds']
    reliability_log('leak', 'open fds of the long-lived pause process', 'clean' if len(set(fds)) == 1 else 'LEAKED',
                    before=fds[0], after=fds[-1], cycles=CYCLES)
    reliability_log('leak', 'open fds of the driving process', 'clean' if wfds[-1] == wfds[1] else 'LEAKED',
                    before=wfds[1], after=wfds[-1], cycles=CYCLES)
    secs = r['cycle_seconds']
    reliability_log('timing', 'soak cycle (1 pod up+down, 1 re-converge)', 'measured', cycles=CYCLES,
                    median_s=round(statistics.median(secs), 3), total_s=round(sum(secs), 1))
    print('soak: %d cycles, median %.2f s/cycle, total %.0f s' % (CYCLES, statistics.median(secs), sum(secs)))
    assert r['unexpected'] == [], r['unexpected'][:5]
    assert after == baseline
    assert len(set(fds)) == 1, fds
    # the first cycle may open lazily cached handles (libc, the pause binary check); none after
    assert wfds[-1] == wfds[1], wfds
