"""Acceptance: the chapter ("Let's build a Pod", ../shared/seeds/), step by step.

Everything runs as on a node, but inside a throwaway node network namespace with state
roots in a temporary directory and cgroups under a unique parent (see test_pod_role.py).
Each step asserts what the chapter shows:

  3.3    the process count grows by the pod's processes; phase / podIP / hostIP
  3.4.2  `mount` inside shows resolv.conf mounted in from the host side; /data is the host's dir
  3.4.3  `ps ax` inside: the entry process is PID 1
  3.4.4  a network namespace without networking has only lo; the pod has eth0 in 10.244.0.0/16
  3.4.6  the greedy pod's cgroup holds the 200Mi limit
  3.4.7  a shell (unshare -p -f --mount-proc ... chroot box) in a 10-byte memory cgroup cannot
         fork `ls`; it works again once the limit is lifted
  3.5.3  iptables-save: KUBE-SVC-ERIFXISQEP7F7OF4 balances with --probability 0.5 to
         KUBE-SEP-IT2ZTR26TO4XFPTO, which DNATs to the first CoreDNS-like pod on port 53
"""
import os
import subprocess
import time

import yaml

from conftest import REPO, run_module, unique
from harness import read_until
from test_pod_role import node, in_pod, task_result  # noqa: F401 - `node` is a fixture

CGROUP_ROOT = '/sys/fs/cgroup'


def pids():
    return set(int(p) for p in os.listdir('/proc') if p.isdigit())


def write_yaml(path, obj):
    with open(path, 'w') as f:
        yaml.safe_dump(obj, f)
    return path


def coredns_pod(nd, name):
    return write_yaml(os.path.join(nd.tmp, name + '.yaml'), {
        'apiVersion': 'v1', 'kind': 'Pod',
        'metadata': {'name': name, 'namespace': 'kube-system', 'labels': {'k8s-app': 'kube-dns'}},
        'spec': {'containers': [{'name': 'coredns', 'image': 'docker.io/busybox:latest',
                                 'command': ['sleep', '10000'],
                                 'ports': [{'name': 'dns-tcp', 'containerPort': 53, 'protocol': 'TCP'},
                                           {'name': 'dns', 'containerPort': 53, 'protocol': 'UDP'}]}]}})


def kube_dns_service(nd):
    with open(os.path.join(REPO, 'examples', 'kube-dns-service.yaml')) as f:
        svc = [d for d in yaml.safe_load_all(f) if d and d.get('kind') == 'Service']
    return write_yaml(os.path.join(nd.tmp, 'kube-dns.yaml'), svc[0])


def test_the_chapter_end_to_end(node):  # noqa: F811 - the fixture imported above
    # 3.4.4 first half: a sandbox alone -- its network namespace has only lo
    bare = dict(name=unique('bare'), state_root=os.path.join(node.tmp, 'bare-state'),
                netns_dir=os.path.join(node.tmp, 'bare-netns'), log_root=os.path.join(node.tmp, 'bare-logs'))
    r = run_module('ns_sandbox', bare)
    assert not r.failed, r
    try:
        links = subprocess.run(['nsenter', '--net=' + r['netns_path'], 'ip', '-o', 'link'], stdout=subprocess.PIPE,
                               check=True).stdout.decode().splitlines()
        assert [ln.split(':')[1].strip() for ln in links] == ['lo']
    finally:
        assert not run_module('ns_sandbox', dict(bare, state='absent', grace_period=0)).failed
        subprocess.run(['umount', bare['netns_dir']], check=False)

    # 3.3: the chapter's pod (demo shape: + /tmp-like hostPath at /data, 200Mi), the greedy pod,
    # and two CoreDNS-like pods for the kube-dns Service
    demo = node.manifest('core-k8s')
    with open(os.path.join(REPO, 'examples', 'greedy-pod.yaml')) as f:
        greedy = write_yaml(os.path.join(node.tmp, 'greedy.yaml'), yaml.safe_load(f))
    dns = [coredns_pod(node, 'coredns-a'), coredns_pod(node, 'coredns-b')]
    files = dns + [demo, greedy]
    node.files.extend(files)
    with open(os.path.join(node.hostdir, 'hello.txt'), 'w') as f:
        f.write('written on the host\n')

    before = pids()
    stats, res = node.run('pod_up.yml', files)
    assert stats['failures'] == 0
    recs = dict((r['name'], r) for r in node.records())
    assert sorted(recs) == ['core-k8s', 'core-k8s-greedy', 'coredns-a', 'coredns-b']
    new = pids() - before
    for rec in recs.values():  # each pod brought its pause process and its container
        assert rec['sandbox']['pid'] in new
        assert all(c['pid'] in new for c in rec['containers'].values())

    # kubectl get pods -o jsonpath='{.items[0].status.phase}' / podIP / hostIP
    st = run_module('pod_status', dict(name='core-k8s', namespace='default', state_root=node.vars['pod_state_root'],
                                       update=False))['status']
    assert st['phase'] == 'Running'
    assert st['podIP'].startswith('10.244.')
    assert st['hostIP'] == node.vars['pod_host_ip']

    pid = recs['core-k8s']['containers']['any-old-name-will-do']['pid']
    # 3.4.2: mount shows resolv.conf (kubelet bind-mounts it in), /data holds the host's file
    mounts = in_pod(pid, 'mount')
    assert any(' on /etc/resolv.conf ' in ln for ln in mounts.splitlines()), mounts
    assert 'hello.txt' in in_pod(pid, 'ls /data')
    # 3.4.3: ps ax -- the entry process is PID 1, nothing of the host is visible
    ps = in_pod(pid, 'ps ax').splitlines()
    assert ps[1].split()[0] == '1' and 'sleep 10000' in ps[1]
    assert len(ps) <= 4  # header, sleep, the sh and ps run by nsenter
    # 3.4.4 second half: the pod has eth0 with its 10.244 address
    addrs = in_pod(pid, 'ip -o -4 addr show eth0')
    assert 'eth0' in addrs and (st['podIP'] + '/') in addrs

    # 3.4.6: the greedy pod's cgroup holds the 200Mi limit
    mem = recs['core-k8s-greedy']['cgroups']['paths']['memory']
    with open(os.path.join(mem, 'memory.limit_in_bytes')) as f:
        assert int(f.read()) == 200 * 1024 * 1024

    # 3.4.7: the chroot0 experiment -- a box, a shell as PID 1 of its own pid namespace, 10 bytes
    box = os.path.join(node.tmp, 'chroot0', 'rootfs')
    r = run_module('chroot_rootfs', dict(path=box, busybox=True, etc_files=False, shm_size='0'))
    assert not r.failed, r
    parent = node.cg_parent + '/chroot'
    sh = subprocess.Popen(['unshare', '-p', '-f', '--mount-proc=%s/proc' % box, 'chroot', box, '/bin/sh', '-i'],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        children = []
        while not children and time.monotonic() < deadline:
            try:
                with open('/proc/%d/task/%d/children' % (sh.pid, sh.pid)) as f:
                    children = [int(x) for x in f.read().split()]
            except OSError:
                pass
            time.sleep(0.05)
        shell = children[0]
        sh.stdin.write(b'echo "pid=$$"\n')
        sh.stdin.flush()
        assert 'pid=1' in read_until(sh, b'pid=', 5)  # the chapter's PID 1 phenomenon
        r = run_module('cgroup_limit', dict(pod_uid='chroot0', parent=parent, memory_limit='10', swappiness=0,
                                            oom_kill_disable=True, pids=[shell]))
        assert not r.failed, r.get('msg')
        sh.stdin.write(b'ls /; echo "rc=$?"\n')
        sh.stdin.flush()
        out = read_until(sh, b'Cannot allocate memory', 10)
        if 'Cannot allocate memory' not in out:
            # the fork's charge can wait in the memcg OOM path (oom_kill_disable) instead of failing
            # at once; then it fails as soon as the limit moves. Either way ls never ran.
            with open(os.path.join(r['paths']['memory'], 'memory.oom_control')) as f:
                assert 'under_oom 1' in f.read(), out
        assert 'rc=0' not in out, out
        r = run_module('cgroup_limit', dict(pod_uid='chroot0', parent=parent, memory_limit='max', swappiness=0,
                                            oom_kill_disable=True))
        assert not r.failed and r.changed
        out += read_until(sh, b'rc=', 10)
        # busybox ash: "sh: can't fork: Cannot allocate memory" (the chapter's bash: "bash: fork: ...")
        assert 'Cannot allocate memory' in out and 'rc=0' not in out, out
        sh.stdin.write(b'ls /; echo "rc2=$?"\n')
        sh.stdin.flush()
        out = read_until(sh, b'rc2=', 10)
        assert 'rc2=0' in out and 'bin' in out, out
    finally:
        sh.kill()
        sh.wait()
        r = run_module('cgroup_limit', dict(pod_uid='chroot0', parent=parent, state='absent', on_processes='kill'))
        assert not r.failed, r.get('msg')
        assert not run_module('chroot_rootfs', dict(path=box, state='absent')).failed

    # 3.5.3: a kube-dns-like Service over the two CoreDNS-like pods, kube-proxy's rules
    svc = kube_dns_service(node)
    stats, _ = node.run('services.yml', files, service_files=[svc], service_state_root=node.vars['pod_state_root'],
                        service_rules_state_dir=os.path.join(node.tmp, 'rules'), barepod_hosts='localhost')
    assert stats['failures'] == 0
    ip_a = recs['coredns-a']['network']['ip']
    assert ip_a == '10.244.0.2'  # first address of the fresh range, as in the chapter
    save = subprocess.run(['ip', 'netns', 'exec', node.netns, 'iptables-save', '-t', 'nat'], stdout=subprocess.PIPE,
                          check=True).stdout.decode().splitlines()
    svc_rules = [ln for ln in save if ln.startswith('-A KUBE-SVC-ERIFXISQEP7F7OF4 ')]
    assert any('kube-system/kube-dns:dns-tcp' in ln and '--mode random --probability 0.50000000000' in ln
               and ln.endswith('-j KUBE-SEP-IT2ZTR26TO4XFPTO') for ln in svc_rules), svc_rules
    sep = [ln for ln in save if ln.startswith('-A KUBE-SEP-IT2ZTR26TO4XFPTO ')]
    assert any(ln.endswith('-j DNAT --to-destination 10.244.0.2:53') and '-p tcp' in ln for ln in sep), sep
    assert any('-s 10.244.0.2/32' in ln and ln.endswith('-j KUBE-MARK-MASQ') for ln in sep), sep

    stats, _ = node.run('services.yml', files, service_files=[svc], service_state='absent',
                        service_state_root=node.vars['pod_state_root'],
                        service_rules_state_dir=os.path.join(node.tmp, 'rules'), barepod_hosts='localhost')
    assert stats['failures'] == 0
