"""Faults (issue 7): kill -9 at each step of pod bring-up, and injected failures.

Kill: the pod role runs through ansible-playbook with BAREPOD_FAILPOINTS=<step>=kill; the
module dies at that step (SIGKILL, no cleanup), the play fails. Converging again must end with
exactly one sandbox, one container, one veth, one address, one masquerade chain, one cgroup tree
and one record; a third run changes nothing; teardown returns the node to its baseline.
"""
import os

import pytest

from _node import converged_exactly_once

STEPS = ['rootfs-before-mounts', 'sandbox-before-netns', 'sandbox-before-record', 'cgroup-before-limits', 'ipam-after-reserve',
         'veth-before-address']


def warm_up(node, worker):
    """Node-level things the first pod creates and the last one keeps (bridge, QoS cgroups,
    IPAM dir): made once, so the baseline is what every teardown must return to."""
    m = node.manifest_dict('warm-up')
    worker(node, 'up', [m])
    worker(node, 'down', [m])
    return node.snapshot()


def victim_up(node, worker):
    """A warmed-up node (warm_up) running one pod, `victim`: (baseline, its manifest, its record)."""
    baseline = warm_up(node, worker)
    m = node.manifest_dict('victim')
    worker(node, 'up', [m])
    [rec] = node.records()
    return baseline, m, rec


@pytest.mark.parametrize('step', STEPS)
def test_kill_at_step_then_converge(node, worker, reliability_log, step):
    baseline = warm_up(node, worker)
    f = node.manifest('victim')
    rc, _stats, _res, failures = node.playbook('pod_up.yml', [f], failpoints=step + '=kill')
    assert rc != 0 and failures, 'the failpoint %s did not fire' % step
    reliability_log('fault', 'kill -9 at %s (ansible-playbook pod_up)' % step, 'injected',
                    task=failures[0]['task'])
    stats = node.up([f])[0]
    rec, _snap = converged_exactly_once(node, 'victim', baseline)
    stats2 = node.up([f])[0]
    assert stats2['changed'] == 0, stats2
    node.down([f])
    after = node.snapshot()
    assert after == baseline
    reliability_log('fault', 'kill -9 at %s (ansible-playbook pod_up)' % step, 'survived',
                    converged_changed=stats['changed'], leaks=0)


# ---------------------------------------------------------------- injected failures
# Through the module managers in one process (the pod role's steps, same parameters): fast,
# and what a module would hand to fail_json is the BarepodError's message.

@pytest.mark.parametrize('step', STEPS)
def test_error_at_step_is_clear_undoable_and_retry_succeeds(node, worker, reliability_log, step):
    baseline = warm_up(node, worker)
    m = node.manifest_dict('victim')
    r = worker(node, 'up', [m], failpoints=step + '=error')
    assert r.get('failed') and r['msg'] == 'failpoint %s' % step, r
    reliability_log('fault', 'error at %s' % step, 'injected', msg=r['msg'])
    # what it built is undone by a teardown ...
    worker(node, 'down', [m])
    assert node.snapshot() == baseline
    # ... or converged by a retry
    r = worker(node, 'up', [m], failpoints=step + '=error')
    assert r.get('failed'), r
    worker(node, 'up', [m])
    converged_exactly_once(node, 'victim', baseline)
    again = worker(node, 'up', [m])['results'][0]
    assert again['changed'] == [], again
    worker(node, 'down', [m])
    assert node.snapshot() == baseline
    reliability_log('fault', 'error at %s' % step, 'survived', leaks=0)


def test_full_ip_range(node, worker, reliability_log):
    small = dict(pod_subnet='10.244.0.0/30')  # .1 is the gateway, .2 the only address
    baseline = warm_up(node, worker)
    a, b = node.manifest_dict('first'), node.manifest_dict('second')
    assert not worker(node, 'up', [a], vars_=small).get('failed')
    r = worker(node, 'up', [b], vars_=small)
    assert r.get('failed'), r
    assert 'no IP addresses available' in r['msg'] and 'subnet' in r['msg'], r['msg']
    reliability_log('fault', 'full IP range', 'injected', msg=r['msg'])
    # the failed pod holds no address; the first one is untouched
    assert node.ipam_files() == ['10.244.0.2']
    worker(node, 'down', [a, b], vars_=small)
    assert node.snapshot() == baseline
    assert not worker(node, 'up', [b], vars_=small).get('failed')
    assert node.ipam_files() == ['10.244.0.2']
    worker(node, 'down', [b], vars_=small)
    assert node.snapshot() == baseline
    reliability_log('fault', 'full IP range', 'survived', leaks=0)


def test_failing_iptables_restore(node, worker, reliability_log, tmp_path):
    """A failing command (iptables-restore exits 1): the fresh attachment is rolled back."""
    baseline = warm_up(node, worker)
    shim = tmp_path / 'shim'
    shim.mkdir()
    (shim / 'iptables-restore').write_text('#!/bin/sh\necho "iptables-restore: simulated failure" >&2\nexit 1\n')
    (shim / 'iptables-restore').chmod(0o755)
    m = node.manifest_dict('victim')
    r = worker(node, 'up', [m], env_extra=dict(PATH='%s:%s' % (shim, os.environ['PATH'])))
    assert r.get('failed') and 'simulated failure' in r['msg'], r
    reliability_log('fault', 'failing command (iptables-restore)', 'injected', msg=r['msg'])
    snap = node.snapshot()
    assert snap['ipam'] == [] and snap['links'] == baseline['links'], snap  # rolled back
    worker(node, 'up', [m])
    converged_exactly_once(node, 'victim', baseline)
    worker(node, 'down', [m])
    assert node.snapshot() == baseline
    reliability_log('fault', 'failing command (iptables-restore)', 'survived', leaks=0)


def test_read_only_state_dir(node, worker, reliability_log):
    """The pod role through ansible-playbook with a read-only state root: a clear failure, no traceback."""
    import subprocess
    baseline = warm_up(node, worker)
    f = node.manifest('victim')
    state = node.vars['pod_state_root']
    subprocess.run(['mount', '--bind', state, state], check=True)
    subprocess.run(['mount', '-o', 'remount,bind,ro', state], check=True)
    try:
        rc, _stats, _res, failures = node.playbook('pod_up.yml', [f])
    finally:
        subprocess.run(['umount', state], check=True)
    assert rc != 0 and failures
    msg = failures[0]['msg'] or ''
    assert 'Read-only file system' in msg and 'Traceback' not in msg + failures[0]['module_stderr'], failures
    reliability_log('fault', 'read-only state directory', 'injected', msg=msg)
    node.up([f])
    converged_exactly_once(node, 'victim', baseline)
    node.down([f])
    assert node.snapshot() == baseline
    reliability_log('fault', 'read-only state directory', 'survived', leaks=0)


# ---------------------------------------------------------------- mid-rule-sync
RULE_STEPS = ['rules-before-restore', 'rules-between-tables']
FIRST_SYNC_STEPS = ['rules-while-streaming', 'rules-between-tables']


def _interrupted(node, reliability_log, objects, step, mode, backend='nft'):
    """One kube_svc_rules run with the failpoint armed; it must die (kill) or fail (error) there."""
    from test_drift import svc_args
    from _node import run_module_in
    r = run_module_in(node, 'kube_svc_rules', svc_args(node, objects, backend=backend),
                      failpoints='%s=%s' % (step, mode))
    if mode == 'kill':
        assert r['_rc'] == -9, r
    else:
        assert r.get('failed') and r['msg'] == 'failpoint %s' % step, r
    reliability_log('fault', '%s at %s (kube_svc_rules)' % ('kill -9' if mode == 'kill' else 'error', step), 'injected')


def _converges_like_a_clean_sync(node, reliability_log, objects, step, mode, backend='nft'):
    """The next run (default resync=auto) ends with exactly the rules a clean sync into a fresh
    node writes, and the run after that changes nothing."""
    from test_drift import svc_args
    from _node import Node, run_module_in
    r = run_module_in(node, 'kube_svc_rules', svc_args(node, objects, backend=backend))
    assert r['_rc'] == 0 and not r.get('failed'), r
    got = dict((t, node.rules(t, backend)) for t in ('filter', 'nat'))
    with Node(os.path.join(node.tmp, 'ref')) as ref:
        r = run_module_in(ref, 'kube_svc_rules', svc_args(ref, objects, backend=backend))
        assert r['_rc'] == 0, r
        want = dict((t, ref.rules(t, backend)) for t in ('filter', 'nat'))
    assert got == want
    assert not run_module_in(node, 'kube_svc_rules', svc_args(node, objects, backend=backend))['changed']
    assert not run_module_in(node, 'kube_svc_rules', svc_args(node, objects, backend=backend,
                                                              resync='always'))['changed']
    run_module_in(node, 'kube_svc_rules', svc_args(node, [], state='absent', backend=backend))
    reliability_log('fault', '%s at %s (kube_svc_rules)' % ('kill -9' if mode == 'kill' else 'error', step), 'survived')


@pytest.mark.parametrize('mode', ['kill', 'error'])
@pytest.mark.parametrize('step', RULE_STEPS)
def test_rule_sync_interrupted_then_converges(node, reliability_log, step, mode):
    """kube_svc_rules dies (or fails) before its iptables-restore, or after the first table of the
    batch was committed, while changing existing rules: the next run converges."""
    from test_drift import kube_dns, svc_args
    from _node import run_module_in
    with_eps, without = kube_dns(), kube_dns(endpoints=False)  # the change touches filter and nat
    r = run_module_in(node, 'kube_svc_rules', svc_args(node, with_eps))
    assert r['_rc'] == 0 and r['changed'], r
    _interrupted(node, reliability_log, without, step, mode)
    _converges_like_a_clean_sync(node, reliability_log, without, step, mode)


@pytest.mark.parametrize('mode', ['kill', 'error'])
@pytest.mark.parametrize('step', FIRST_SYNC_STEPS)
def test_first_sync_interrupted_while_streaming_then_converges(node, reliability_log, step, mode):
    """A first sync on iptables-legacy streams its batch into iptables-restore while it renders
    (nat first). Stopped with the nat declarations sent but no COMMIT, nothing at all is applied
    (the restore never reads a COMMIT: killed with us, or by us); stopped after the nat table's
    COMMIT, only nat is. Either way the next run converges."""
    from test_drift import kube_dns
    objs = kube_dns()
    _interrupted(node, reliability_log, objs, step, mode, backend='legacy')
    nat, flt = node.rules('nat', 'legacy'), node.rules('filter', 'legacy')
    if step == 'rules-while-streaming':
        assert not [ln for ln in nat + flt if 'KUBE' in ln], (nat, flt)
    else:
        assert [ln for ln in nat if ln.startswith('-A KUBE-SEP-')], nat
        assert not [ln for ln in flt if 'KUBE' in ln], flt
    _converges_like_a_clean_sync(node, reliability_log, objs, step, mode, backend='legacy')


@pytest.mark.parametrize('when', ['sandbox recorded', 'network recorded'])
def test_kill_ansible_playbook_then_converge(node, worker, reliability_log, when):
    """SIGKILL to the ansible-playbook process (the controller) in the middle of a bring-up; the
    module it was running may finish on its own. Converging again ends with one of everything."""
    import json
    import signal
    import subprocess
    import time
    from _node import ANSIBLE_PLAYBOOK, REPO
    baseline = warm_up(node, worker)
    f = node.manifest('victim')
    varsfile = os.path.join(node.tmp, 'kill-vars.json')
    with open(varsfile, 'w') as fh:
        json.dump(dict(node.vars, barepod_pod_files=[f]), fh)
    section = when.split()[0]
    p = subprocess.Popen(['nsenter', '--net=/run/netns/' + node.netns, ANSIBLE_PLAYBOOK,
                          os.path.join(REPO, 'playbooks', 'pod_up.yml'), '-e', '@' + varsfile],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=node.env())
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and p.poll() is None:
            if any(r.get(section) for r in node.records()):
                break
            time.sleep(0.05)
        assert p.poll() is None, 'the playbook ended before %s' % when
        os.kill(p.pid, signal.SIGKILL)   # nsenter execs ansible-playbook: this is its pid
    finally:
        p.wait()
    reliability_log('fault', 'kill -9 ansible-playbook after %s' % when, 'injected')
    # let a module that was running finish by itself (only the controller died)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and 'other' in node.processes().values():
        time.sleep(0.2)
    # controller leftovers (forked workers of the dead ansible-playbook), not pod state
    for pid, kind in node.processes().items():
        if kind == 'other':
            os.kill(pid, signal.SIGKILL)
    node.up([f])
    converged_exactly_once(node, 'victim', baseline)
    assert node.up([f])[0]['changed'] == 0
    node.down([f])
    assert node.snapshot() == baseline
    reliability_log('fault', 'kill -9 ansible-playbook after %s' % when, 'survived', leaks=0)
