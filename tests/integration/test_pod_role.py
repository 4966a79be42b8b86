"""The pod role end to end, as root, inside a throwaway "node" network namespace.

ansible-playbook runs under `nsenter --net=<node netns>` (only the network namespace changes,
so the mounts the modules make are real host mounts, as on a node), with every state root in
a throwaway directory and cgroups under a uniquely named parent. The finalizer tears the pod
down through the role, then removes whatever is left by pid / path (never by name).
"""
import json
import os
import shutil
import signal
import subprocess

import pytest

from harness import CGROUP_ROOT, Node, module_tasks_run


def task_result(res, task_name):
    for play in res['plays']:
        for t in play['tasks']:
            if t['task']['name'].endswith(task_name):
                return t['hosts']['localhost']
    raise KeyError(task_name)


ROLE_CHECK = "Which steps would change (every module's check mode, in one process)"
BATCH_CHECK = "Which steps of each pod would change (every module's check mode, one process for all pods)"


@pytest.fixture
def node(tmp_path):
    n = Node(str(tmp_path), netns_prefix='bpn', cgroup_prefix='barepod-test-', prepare=False)
    try:
        yield n
    finally:
        # through the role first (each manifest once), then whatever is left by pid / path
        n.cleanup(teardown=lambda: n.run('pod_down.yml', list(dict.fromkeys(n.files))))


def in_pod(pid, script):
    return subprocess.run(['nsenter', '-t', str(pid), '-a', '/bin/sh', '-c', script], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=30, check=False).stdout.decode()


def test_pod_up_idempotent_observable_and_down_leaves_nothing(node):
    f = node.manifest()
    node.files.append(f)
    with open(os.path.join(node.hostdir, 'from-host.txt'), 'w') as fh:
        fh.write('hello from the host\n')

    stats, res = node.run('pod_up.yml', [f])
    assert stats['changed'] > 0 and stats['failures'] == 0
    status = task_result(res, 'Pod status as Kubernetes reports it (written to the pod record)')['status']
    assert status['phase'] == 'Running'
    assert status['podIP'].startswith('10.244.')
    assert status['hostIP'] == '192.0.2.10'
    assert status['qosClass'] == 'Burstable'
    assert status['containerStatuses'][0]['ready'] is True

    # the second converge changes nothing
    stats2, _ = node.run('pod_up.yml', [f])
    assert stats2['changed'] == 0, stats2
    # check mode on a converged pod reports nothing either
    stats3, _ = node.run('pod_up.yml', [f], check=True)
    assert stats3['changed'] == 0, stats3

    [rec] = node.records()
    pid = rec['containers']['any-old-name-will-do']['pid']
    ps, addrs, data, hosts, hostname, root = [in_pod(pid, cmd).strip() for cmd in (
        'ps ax', 'ip -o -4 addr', 'ls /data', 'cat /etc/hosts', 'hostname', 'ls /')]
    assert ps.splitlines()[1].split()[0] == '1' and 'sleep 10000' in ps.splitlines()[1]
    assert 'eth0' in addrs and status['podIP'] in addrs
    assert 'from-host.txt' in data
    assert '%s\tcore-k8s' % status['podIP'] in hosts
    assert hostname == 'core-k8s'
    assert 'from-host.txt' not in root and 'work' not in root.split()

    # the container's process is inside its cgroup and the pod cgroup holds the 200Mi limit
    cg = rec['cgroups']
    with open(os.path.join(cg['paths']['memory'], 'memory.limit_in_bytes')) as fh:
        assert int(fh.read()) == 200 * 1024 * 1024
    with open(os.path.join(cg['containers']['any-old-name-will-do']['paths']['memory'], 'cgroup.procs')) as fh:
        assert str(pid) in fh.read().split()

    # the status is in the pod record
    with open(os.path.join(node.vars['pod_state_root'], 'default_core-k8s', 'status.json')) as fh:
        assert json.load(fh)['podIP'] == status['podIP']

    # the fast path: converged pods cost one module call in all (pod_converged checks every pod), the
    # role is not even included; the status fact still comes from the modules' own logic
    _, res = node.run('pod_up.yml', [f])
    assert [p['run'] for p in task_result(res, BATCH_CHECK)['pods']] == [[]]
    assert module_tasks_run(res) == ['barepod.linux.pod_converged']
    fact = task_result(res, "The last pod's status, when it was converged already")['ansible_facts']['pod_status']
    assert fact['podIP'] == status['podIP'] and fact['phase'] == 'Running'

    # drift in a late step: the container dies. Only the containers and status tasks run, for real:
    # check mode (with --diff) reports the restart, the real converge restarts the container
    os.kill(pid, signal.SIGKILL)
    stats, res = node.run('pod_up.yml', [f], check=True, diff=True)
    assert stats['changed'] > 0
    assert task_result(res, ROLE_CHECK)['run'] == ['containers', 'status']
    assert [p['run'] for p in task_result(res, BATCH_CHECK)['pods']] == [['containers', 'status']]
    ctr = task_result(res, 'Containers, joined into the sandbox')
    assert ctr['changed'] and ctr.get('diff'), ctr
    assert module_tasks_run(res) == ['barepod.linux.pod_converged', 'barepod.linux.pod_converged',
                                     'barepod.linux.ns_sandbox', 'barepod.linux.pod_status']
    stats, res = node.run('pod_up.yml', [f])
    assert stats['changed'] > 0
    assert module_tasks_run(res) == ['barepod.linux.pod_converged', 'barepod.linux.pod_converged',
                                     'barepod.linux.ns_sandbox', 'barepod.linux.pod_status']
    [rec] = node.records()
    new_pid = rec['containers']['any-old-name-will-do']['pid']
    assert new_pid != pid and os.path.exists('/proc/%d' % new_pid)
    assert rec['containers']['any-old-name-will-do']['restart_count'] == 1
    with open(os.path.join(rec['cgroups']['containers']['any-old-name-will-do']['paths']['memory'],
                           'cgroup.procs')) as fh:
        assert str(new_pid) in fh.read().split()
    pid = new_pid

    # drift in a middle step: the pod's memory limit changed behind our back. The pod cgroup task and
    # every task after it run; the steps before it (record, rootfs, sandbox) stay skipped, the
    # limit is restored, and the running container is left alone
    limit = os.path.join(cg['paths']['memory'], 'memory.limit_in_bytes')
    with open(limit, 'w') as fh:
        fh.write(str(300 * 1024 * 1024))
    stats, res = node.run('pod_up.yml', [f])
    assert task_result(res, ROLE_CHECK)['run'][0] == 'cgroup_pod'
    ran = module_tasks_run(res)
    assert ran[:3] == ['barepod.linux.pod_converged', 'barepod.linux.pod_converged', 'barepod.linux.cgroup_limit'], ran
    assert 'barepod.linux.chroot_rootfs' not in ran
    assert task_result(res, 'Pod cgroup (QoS class and pod-level limits as kubelet computes them)')['changed']
    assert not task_result(res, 'Containers, joined into the sandbox')['changed']
    with open(limit) as fh:
        assert int(fh.read()) == 200 * 1024 * 1024
    [rec] = node.records()
    assert rec['containers']['any-old-name-will-do']['pid'] == pid
    stats, _ = node.run('pod_up.yml', [f])
    assert stats['changed'] == 0, stats

    veth = rec['network']['host_ifname']
    stats, _ = node.run('pod_down.yml', [f])
    assert stats['changed'] > 0
    stats, _ = node.run('pod_down.yml', [f])
    assert stats['changed'] == 0

    # nothing left: process, mounts, netns file, veth, address, chains, cgroups, record, rootfs
    assert not os.path.exists('/proc/%d' % pid)
    with open('/proc/self/mountinfo') as fh:
        assert [line for line in fh if node.vars['pod_rootfs_root'] in line] == []
    assert os.listdir(node.vars['pod_netns_dir']) == []
    links = subprocess.run(['ip', '-n', node.netns, '-o', 'link'], stdout=subprocess.PIPE, check=True).stdout.decode()
    assert veth not in links
    ipam = os.path.join(node.vars['pod_cni_data_dir'], 'barepod')
    assert sorted(os.listdir(ipam)) == ['last_reserved_ip.0', 'lock']
    nat = subprocess.run(['ip', 'netns', 'exec', node.netns, 'iptables-save', '-t', 'nat'], stdout=subprocess.PIPE,
                         check=True).stdout.decode()
    assert 'CNI-' not in nat
    for ctrl in ('memory', 'pids', 'cpu'):
        qos = os.path.join(CGROUP_ROOT, ctrl, node.cg_parent, 'kubepods', 'burstable')
        assert not [d for d in os.listdir(qos) if d.startswith('pod')] if os.path.isdir(qos) else True
    assert not os.path.exists(os.path.join(node.vars['pod_state_root'], 'default_core-k8s'))
    assert os.listdir(node.vars['pod_rootfs_root']) == []
    assert os.listdir(node.vars['pod_log_root']) == []


def test_two_pods_on_one_node_reach_each_other(node):
    a, b = node.manifest('pod-a'), node.manifest('pod-b', memory='128Mi')
    node.files.extend([a, b])
    node.run('pod_up.yml', [a, b])
    recs = dict((r['name'], r) for r in node.records())
    ip_a, ip_b = recs['pod-a']['network']['ip'], recs['pod-b']['network']['ip']
    assert ip_a != ip_b
    pid_a = recs['pod-a']['containers']['any-old-name-will-do']['pid']
    out = in_pod(pid_a, 'ping -c1 -W2 %s && echo REACHED' % ip_b)
    assert 'REACHED' in out, out


def test_teardown_of_a_partially_built_pod(node):
    """The sandbox was killed from outside and the record deleted: absent still cleans up."""
    f = node.manifest()
    node.files.append(f)
    node.run('pod_up.yml', [f])
    [rec] = node.records()
    os.kill(rec['sandbox']['pid'], signal.SIGKILL)
    os.kill(rec['containers']['any-old-name-will-do']['pid'], signal.SIGKILL)
    shutil.rmtree(os.path.join(node.vars['pod_state_root'], 'default_core-k8s'))
    stats, _ = node.run('pod_down.yml', [f])
    assert stats['failures'] == 0
    with open('/proc/self/mountinfo') as fh:
        assert [line for line in fh if node.vars['pod_rootfs_root'] in line] == []
    links = subprocess.run(['ip', '-n', node.netns, '-o', 'link'], stdout=subprocess.PIPE, check=True).stdout.decode()
    assert rec['network']['host_ifname'] not in links
    assert sorted(os.listdir(os.path.join(node.vars['pod_cni_data_dir'], 'barepod'))) == ['last_reserved_ip.0', 'lock']


def test_demo_playbook_leaves_the_node_as_it_found_it(node):
    """The README's main job (playbooks/demo.yml): the chapter's pod and a kube-dns-like Service
    come up, the status is printed, everything is torn down - and the node-level state the demo
    created (state and cache directories, the QoS cgroups, the bridge) goes too, so the node is
    left as found. Roots, cgroup parent and network namespace are the test's own."""
    f = node.manifest()
    node.files.append(f)
    roots = [node.vars[k] for k in ('pod_state_root', 'pod_rootfs_root', 'pod_log_root', 'pod_cni_data_dir')]
    rules_dir = os.path.join(node.tmp, 'rules')
    assert not any(os.path.exists(p) for p in roots + [rules_dir])
    hierarchies = [os.path.join(CGROUP_ROOT, h) for h in os.listdir(CGROUP_ROOT)
                   if os.path.isdir(os.path.join(CGROUP_ROOT, h)) and not os.path.islink(os.path.join(CGROUP_ROOT, h))]
    qos = [os.path.join(h, node.vars['pod_cgroup_parent']) for h in hierarchies]
    assert not any(os.path.exists(q) for q in qos)
    stats, res = node.run('demo.yml', [f], service_rules_state_dir=rules_dir)
    assert stats['failures'] == 0 and stats['changed'] > 0, stats
    shown = task_result(res, "Show the last pod's phase, podIP and hostIP (kubectl -o jsonpath='{.status.phase}' ...)")
    assert 'phase=Running podIP=10.244.' in shown['msg'], shown
    rules = task_result(res, 'Iptables-save | grep KUBE-SVC / KUBE-SEP (the chapter\'s DNAT to the pod on port 53)')
    assert any('-j DNAT --to-destination 10.244.' in r and r.endswith(':53') for r in rules['msg']), rules
    # the cgroup hierarchies really held the pod (so the absence below means removal)
    removed = task_result(res, 'The QoS cgroups the demo created (empty again after the teardown)')
    assert any(r.get('changed') for r in removed['results']), removed
    left = [p for p in roots + [rules_dir] + qos if os.path.exists(p)]
    assert left == [], left
    link = subprocess.run(['ip', '-n', node.netns, '-o', 'link', 'show', 'dev', 'cni0'],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    assert link.returncode != 0, link.stdout
    assert node.records() == []
