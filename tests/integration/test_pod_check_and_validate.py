"""Check mode of the main job, and a bad pod refused before anything is made (issue 17, items 4, 5).

Every run happens inside a throwaway "node" network namespace (nsenter --net) with the test's
own state roots and cgroup parent, as tests/integration/test_pod_role.py does.
"""
import json
import os
import shutil
import subprocess
import uuid

import pytest
import yaml

from conftest import ANSIBLE_PLAYBOOK, REPO, ansible_playbook, failed_tasks, run_module
from test_node_role import playbook as node_playbook, routes, sysctl, two_nodes  # noqa: F401 - two_nodes is a fixture

CGROUP_ROOT = '/sys/fs/cgroup'


class CheckNode(object):
    def __init__(self, tmp):
        self.tmp = tmp
        self.netns = 'bpc' + uuid.uuid4().hex[:8]
        self.cg_parent = 'barepod-test-' + uuid.uuid4().hex[:8]
        subprocess.run(['ip', 'netns', 'add', self.netns], check=True)
        self.hostdir = os.path.join(tmp, 'hostdata')
        os.makedirs(self.hostdir)
        self.vars = dict(
            pod_state_root=os.path.join(tmp, 'state'), pod_netns_dir=os.path.join(tmp, 'netns'),
            pod_rootfs_root=os.path.join(tmp, 'rootfs'), pod_log_root=os.path.join(tmp, 'logs'),
            pod_cni_data_dir=os.path.join(tmp, 'cni'), pod_cgroup_parent=self.cg_parent + '/kubepods',
            pod_grace_period=1, pod_host_ip='192.0.2.10', pod_allowed_host_paths=[self.hostdir],
            service_rules_state_dir=os.path.join(tmp, 'rules'))
        self.roots = [self.vars[k] for k in ('pod_state_root', 'pod_netns_dir', 'pod_rootfs_root', 'pod_log_root',
                                             'pod_cni_data_dir', 'service_rules_state_dir')]

    def manifest(self, name='core-k8s', edit=None):
        with open(os.path.join(REPO, 'examples', 'demo-pod.yaml')) as f:
            m = yaml.safe_load(f)
        m['metadata']['name'] = name
        m['spec']['volumes'][0]['hostPath']['path'] = self.hostdir
        if edit:
            edit(m)
        path = os.path.join(self.tmp, name + '.yaml')
        with open(path, 'w') as f:
            yaml.safe_dump(m, f)
        return path

    def run(self, name, files, check=False, **extra):
        v = dict(self.vars, barepod_pod_files=files)
        v.update(extra)
        varsfile = os.path.join(self.tmp, 'vars.json')
        with open(varsfile, 'w') as f:
            json.dump(v, f)
        cmd = ['nsenter', '--net=/run/netns/' + self.netns, ANSIBLE_PLAYBOOK,
               os.path.join(REPO, 'playbooks', name), '-e', '@' + varsfile]
        if check:
            cmd.append('--check')
        return ansible_playbook(cmd)

    def qos(self):
        out = []
        for h in os.listdir(CGROUP_ROOT):
            p = os.path.join(CGROUP_ROOT, h)
            if os.path.isdir(p) and not os.path.islink(p):
                out.append(os.path.join(p, self.cg_parent))
        return out

    def netns_state(self):
        def ns(*argv):
            return subprocess.run(['ip', 'netns', 'exec', self.netns] + list(argv), stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, check=False).stdout.decode()
        links = ns('ip', '-o', 'link')
        addrs = ns('ip', '-o', 'addr')
        rules = [line for line in (ns('iptables-save') + ns('ip6tables-save')).splitlines()
                 if line.startswith(('-A', ':KUBE', ':BAREPOD', ':CNI'))]
        fwd = ns('cat', '/proc/sys/net/ipv4/ip_forward')
        return dict(links=[line.split(':')[1].strip() for line in links.splitlines()], addrs=addrs, rules=rules,
                    forward=fwd)

    def netns_names(self):
        # the pod's own netns would be under pod_netns_dir (a root checked above); other tests may add
        # and remove their own namespaces concurrently, so only barepod's default names count here
        names = os.listdir('/run/netns') if os.path.isdir('/run/netns') else []
        return sorted(n for n in names if n.startswith('barepod-'))

    def cleanup(self):
        with open('/proc/self/mountinfo') as f:
            mps = [line.split()[4] for line in f]
        for mp in sorted((m for m in mps if m.startswith(self.tmp)), key=len, reverse=True):
            subprocess.run(['umount', '-l', mp], check=False)
        for base in self.qos():
            if os.path.isdir(base):
                for d, _, _ in sorted(os.walk(base), key=lambda x: len(x[0]), reverse=True):
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass
        subprocess.run(['ip', 'netns', 'del', self.netns], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def cnode(tmp_path):
    n = CheckNode(str(tmp_path))
    try:
        yield n
    finally:
        n.cleanup()


def task_result(res, task_name):
    """The first task of the run whose name ends with task_name (its localhost result)."""
    for play in res['plays']:
        for t in play['tasks']:
            if t['task']['name'].endswith(task_name) and not t['hosts'].get('localhost', {}).get('skipped'):
                return t['hosts']['localhost']
    raise KeyError(task_name)


def _left(node):
    return [p for p in node.roots + node.qos() if os.path.exists(p)]


def test_demo_in_check_mode_reports_what_it_would_create_and_creates_nothing(cnode):
    f = cnode.manifest()
    before_ns = cnode.netns_names()
    before_net = cnode.netns_state()
    assert _left(cnode) == []
    rc, res = cnode.run('demo.yml', [f], check=True)
    assert rc == 0, json.dumps(failed_tasks(res), indent=1)[:6000]
    stats = res['stats']['localhost']
    assert stats['failures'] == 0 and stats['changed'] > 0, stats
    assert _left(cnode) == []
    assert cnode.netns_names() == before_ns
    assert cnode.netns_state() == before_net
    # what would be created is reported, step by step, as each module's planned actions
    sandbox = task_result(res, 'Sandbox (pause) in new pid, net, mount, uts and ipc namespaces')
    assert sandbox['changed'] and [a['action'] for a in sandbox['actions']] == ['start_sandbox'], sandbox
    net = task_result(res, "Network (veth into the sandbox's netns, address from host-local IPAM)")
    assert net['changed'] and net['ip'].startswith('10.244.0.'), net
    planned = [a['action'] for a in net['actions']]
    for want in ('reserve', 'create bridge', 'create veth', 'add address', 'set default route', 'masquerade'):
        assert want in planned, planned
    cg = task_result(res, 'Pod cgroup (QoS class and pod-level limits as kubelet computes them)')
    assert cg['changed'] and any(a['action'] == 'mkdir' and cnode.cg_parent in a['target'] for a in cg['actions'])
    rootfs = task_result(res, 'Root filesystem of each container')
    assert all(r['changed'] for r in rootfs['results']), rootfs
    ctrs = task_result(res, 'Containers, joined into the sandbox')
    assert 'start_container' in [a['action'] for a in ctrs['actions']], ctrs
    rules = task_result(res, "Write the Services' rules on this node (kube-proxy's job)")
    assert rules['changed'], rules


def test_veth_net_check_mode_plans_the_whole_attach_when_the_netns_does_not_exist_yet(netns, tmp_path):
    """In check mode the sandbox's netns may be one an earlier step would create: the whole attach
    is planned (not refused), and nothing is made. Outside check mode it is still refused."""
    node = netns()
    args = dict(pod_uid='0b0e8c2e-0000-4000-8000-000000000001', netns=str(tmp_path / 'netns' / 'missing'),
                subnet='10.244.0.0/24', bridge='cni0', data_dir=str(tmp_path / 'cni'),
                state_root=str(tmp_path / 'state'), namespace='default', name='p')
    r = run_module('veth_net', args, check=True, netns=node)
    assert not r.failed and r.changed, r
    planned = [a['action'] for a in r['actions']]
    for want in ('reserve', 'create bridge', 'create veth', 'add address', 'set default route'):
        assert want in planned, planned
    assert r['ip'] == '10.244.0.2'
    assert not (tmp_path / 'cni').exists() and not (tmp_path / 'state').exists()
    links = subprocess.run(['ip', '-n', node, '-o', 'link'], stdout=subprocess.PIPE, check=True).stdout.decode()
    assert 'cni0' not in links and 'veth' not in links
    r = run_module('veth_net', args, netns=node)
    assert r.failed and 'does not exist' in r['msg'], r
    assert not (tmp_path / 'cni' / 'barepod' / '10.244.0.2').exists()


def test_ns_sandbox_check_mode_plans_containers_whose_rootfs_and_cgroups_do_not_exist_yet(tmp_path):
    """In check mode a container's rootfs and cgroups may be ones earlier steps (chroot_rootfs,
    cgroup_limit) would create: ns_sandbox plans starting it. Outside check mode they are refused."""
    args = dict(name='p', namespace='default', pod_uid='0b0e8c2e-0000-4000-8000-000000000002',
                state_root=str(tmp_path / 'state'), netns_dir=str(tmp_path / 'netns'),
                log_root=str(tmp_path / 'logs'),
                containers=[dict(name='c', rootfs=str(tmp_path / 'rootfs' / 'c'), command=['sleep', '10'],
                                 cgroups=[str(tmp_path / 'cg' / 'c')])])
    r = run_module('ns_sandbox', args, check=True)
    assert not r.failed and r.changed, r
    assert [a['action'] for a in r['actions']] == ['start_sandbox', 'start_container'], r['actions']
    assert sorted(os.listdir(str(tmp_path))) == []
    r = run_module('ns_sandbox', args)
    assert r.failed and r['msg'].startswith('containers[0].rootfs') and 'does not exist' in r['msg'], r
    # a rootfs that exists is still checked in check mode: the command must be found in it
    os.makedirs(str(tmp_path / 'rootfs' / 'c'))
    r = run_module('ns_sandbox', args, check=True)
    assert r.failed and "'sleep' not found" in r['msg'], r
    shutil.rmtree(str(tmp_path / 'rootfs'))


def _set_memory(value):
    def edit(m):
        m['spec']['containers'][0]['resources']['limits']['memory'] = value
    return edit


def _no_command(m):
    m['spec']['containers'][0].pop('command', None)
    m['spec']['containers'][0].pop('args', None)


@pytest.mark.parametrize('edit,extra,expect', [
    (_set_memory('12QQ'), {}, 'spec.containers[0].resources.limits.memory'),
    (_no_command, {}, 'spec.containers[0].command'),
    # known only on the node: the bridge name is taken by an interface that is not a bridge (veth_net's
    # own refusal, reached by pod_converged's check of the later steps before the record is written)
    (None, dict(pod_bridge='bpdummy0'), 'not a bridge'),
], ids=['memory-12QQ', 'no-command', 'bridge-not-a-bridge'])
def test_a_bad_pod_is_refused_before_anything_is_made(cnode, edit, extra, expect):
    """pod_up.yml with a pod its modules would refuse fails naming the field, and leaves no record,
    rootfs, log dir, netns, cgroup, veth, address reservation or iptables rule behind."""
    subprocess.run(['ip', '-n', cnode.netns, 'link', 'add', 'bpdummy0', 'type', 'veth', 'peer', 'name', 'bpdummy1'], check=True)
    before_net = cnode.netns_state()
    f = cnode.manifest(edit=edit)
    rc, res = cnode.run('pod_up.yml', [f], **extra)
    assert rc != 0
    msgs = [h.get('msg', '') for t in failed_tasks(res) for h in t['hosts'].values()]
    assert any(expect in str(m) for m in msgs), msgs
    assert _left(cnode) == []
    assert cnode.netns_state() == before_net


def test_node_role_in_check_mode_reports_what_it_would_change_and_changes_nothing(two_nodes, tmp_path):  # noqa: F811
    """playbooks/node.yml --check on fresh nodes: the routes and ip_forward are reported as changes
    (changed > 0 on every node, node_routes' planned routes), nothing is made."""
    names, inv = two_nodes
    for ns in names.values():
        subprocess.run(['ip', 'netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=0'], check=True)
    res = node_playbook(inv, check=True)
    assert all(s['changed'] > 0 and s['failures'] == 0 for s in res['stats'].values()), res['stats']
    for ns in names.values():
        assert routes(ns) == [] and sysctl(ns, 'net.ipv4.ip_forward') == '0'
    assert not any((tmp_path / ('sysctl-%s.conf' % n)).exists() for n in names)
