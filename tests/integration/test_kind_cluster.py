"""playbooks/kind_cluster.yml against the real Docker engine.

Creates a three-node kind-style cluster with a unique name, checks what kind would show (container
names, labels, hostnames, the `kind` network), that Ansible reaches every node through the
community.docker.docker connection, that the nodes reach each other by IP, that a second run
changes nothing, then deletes it and checks nothing is left. Skipped only when dockerd cannot run.
"""
import functools
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

import harness

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
IMAGE = 'barepod/node:bookworm'
NETWORK = 'kind'
CREATED_LABEL = 'io.barepod.kind_cluster.created'
DETECT_PLAY = '''
- name: Detect a running cluster on every node
  hosts: all
  gather_facts: false
  tasks:
    - name: Detect
      ansible.builtin.include_role:
        name: barepod.linux.kind_cluster
        tasks_from: detect
'''


# the CompletedProcess (callers read .stdout and .returncode), 120 s unless told otherwise
sh = functools.partial(harness.run, timeout=120)


def ansible_env():
    env = dict(os.environ)
    env.update(ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
               ANSIBLE_DEPRECATION_WARNINGS='0', ANSIBLE_STDOUT_CALLBACK='ansible.posix.json',
               ANSIBLE_LOAD_CALLBACK_PLUGINS='1', PATH=BIN + os.pathsep + env.get('PATH', ''))
    return env


def playbook(*extra, check=True):
    p = subprocess.run([os.path.join(BIN, 'ansible-playbook'), 'playbooks/kind_cluster.yml'] + list(extra),
                       cwd=REPO, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, text=True, timeout=600, check=False)
    out = p.stdout
    result = json.loads(out[out.index('{'):]) if '{' in out else {}
    if check and p.returncode != 0:
        raise AssertionError('ansible-playbook failed (rc=%s)\n%s\n%s' % (p.returncode, out[-5000:], p.stderr[-3000:]))
    result['_rc'] = p.returncode
    return result


def tasks_changed(result):
    return [t['task']['name'] for play in result.get('plays', []) for t in play['tasks']
            if any(h.get('changed') for h in t['hosts'].values())]


def containers(cluster):
    out = sh('docker', 'ps', '-a', '--filter', 'label=io.x-k8s.kind.cluster=%s' % cluster,
             '--format', '{{.Names}}').stdout.split()
    return sorted(out)


def inspect(name):
    return json.loads(sh('docker', 'inspect', name).stdout)[0]


def network():
    p = sh('docker', 'network', 'inspect', NETWORK, check=False)
    return json.loads(p.stdout)[0] if p.returncode == 0 else None


@pytest.fixture(scope='module')
def docker():
    p = subprocess.run(['bash', os.path.join(REPO, 'tools', 'start-dockerd.sh')], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=180, check=False)
    if p.returncode != 0:
        pytest.skip('dockerd cannot run here: %s' % p.stdout.strip()[-800:])
    sh('bash', os.path.join(REPO, 'tools', 'build-node-image.sh'), IMAGE, timeout=900)


@pytest.fixture
def cluster(docker, tmp_path):
    name = 'bpk' + uuid.uuid4().hex[:8]
    inv = tmp_path / ('kind-%s.yml' % name)
    net_before = network()
    yield name, inv, net_before
    # Always clean up, even when the test failed half-way: only what carries this cluster's label.
    for c in containers(name):
        sh('docker', 'rm', '-f', '-v', c, check=False)
    net = network()
    if net_before is None and net and (net.get('Labels') or {}).get(CREATED_LABEL) == 'true' \
            and not net.get('Containers'):
        sh('docker', 'network', 'rm', NETWORK, check=False)


def test_bad_input_fails_before_anything_is_made(docker):
    res = playbook('-e', 'kind_cluster_name=Bad_Name', check=False)
    assert res['_rc'] != 0
    msg = json.dumps(res)
    assert 'kind_cluster_name=' in msg and 'Bad_Name' in msg and 'DNS label' in msg
    assert containers('Bad_Name') == []

    name = 'bpk' + uuid.uuid4().hex[:8]
    res = playbook('-e', 'kind_cluster_name=%s' % name, '-e', 'kind_cluster_image=barepod/node:absent-tag',
                   '-e', 'kind_cluster_build_image=false', check=False)
    assert res['_rc'] != 0
    assert 'barepod/node:absent-tag does not exist and kind_cluster_build_image is false' in json.dumps(res)
    assert containers(name) == []


def test_create_reach_and_delete_a_three_node_cluster(cluster):
    name, inv, net_before = cluster
    nodes = ['%s-control-plane' % name, '%s-worker' % name, '%s-worker2' % name]

    res = playbook('-e', 'kind_cluster_name=%s' % name, '-e', 'kind_cluster_inventory_file=%s' % inv)
    assert containers(name) == sorted(nodes)
    assert any(t.endswith('Run the node containers') for t in tasks_changed(res))

    # Names, hostnames, kind's labels, the kind network, running, pod CIDRs as kind assigns them.
    ips = {}
    for i, n in enumerate(nodes):
        c = inspect(n)
        assert c['State']['Running'], n
        assert c['Config']['Hostname'] == n
        assert c['Config']['Labels']['io.x-k8s.kind.cluster'] == name
        assert c['Config']['Labels']['io.x-k8s.kind.role'] == ('control-plane' if i == 0 else 'worker')
        assert c['Config']['Labels']['io.barepod.pod_cidr'] == '10.244.%d.0/24' % i
        assert list(c['NetworkSettings']['Networks']) == [NETWORK]
        ips[n] = c['NetworkSettings']['Networks'][NETWORK]['IPAddress']
        assert ips[n]
        assert sh('docker', 'exec', n, 'hostname').stdout.strip() == n
    net = network()
    assert net is not None and net['Driver'] == 'bridge'
    assert {v['Name'] for v in net['Containers'].values()} >= set(nodes)

    # The fact the role returns and the inventory file it wrote.
    facts = [h for play in res['plays'] for t in play['tasks'] for h in t['hosts'].values()
             if 'kind_cluster_nodes' in h.get('ansible_facts', {})]
    assert [(n['name'], n['ip']) for n in facts[-1]['ansible_facts']['kind_cluster_nodes']] == \
        [(n, ips[n]) for n in nodes]
    import yaml
    invdata = yaml.safe_load(inv.read_text())
    group = invdata['all']['children']['kind_%s' % name]
    assert group['vars']['ansible_connection'] == 'community.docker.docker'
    assert list(group['children']['kind_control_plane']['hosts']) == nodes[:1]
    assert list(group['children']['kind_workers']['hosts']) == nodes[1:]
    assert group['children']['kind_workers']['hosts'][nodes[2]]['barepod_node_ip'] == ips[nodes[2]]

    # Ansible reaches every node through community.docker.docker: a Python module and a raw command.
    env = ansible_env()
    env['ANSIBLE_STDOUT_CALLBACK'] = 'ansible.builtin.minimal'
    for module, args, expect in (('ping', '', '"ping": "pong"'), ('raw', 'cat /etc/hostname', None)):
        p = subprocess.run([os.path.join(BIN, 'ansible'), '-i', str(inv), 'kind_%s' % name, '-m', module]
                           + (['-a', args] if args else []), cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=300,
                           check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        for n in nodes:
            assert '%s | SUCCESS' % n in p.stdout or '%s | CHANGED' % n in p.stdout, p.stdout
            assert (expect or n) in p.stdout

    # Every node reaches every other node by IP inside the kind network.
    for a in nodes:
        for b in nodes:
            if a != b:
                sh('docker', 'exec', a, 'busybox', 'ping', '-c', '1', '-W', '3', ips[b])

    # Each node has a cgroup tree of its own (private cgroupns, writable), inside its container's cgroup.
    cp = inspect(nodes[0])
    sh('docker', 'exec', nodes[0], 'mkdir', '/sys/fs/cgroup/pids/bp-kind-test')
    host_dir = '/sys/fs/cgroup/pids/docker/%s/bp-kind-test' % cp['Id']
    assert os.path.isdir(host_dir)
    # And sysctls can be set inside a node (its own netns), as pods' networking needs.
    sh('docker', 'exec', nodes[0], 'sysctl', '-w', 'net.ipv4.ip_forward=1')

    # Converged: a second run changes nothing.
    again = playbook('-e', 'kind_cluster_name=%s' % name, '-e', 'kind_cluster_inventory_file=%s' % inv)
    assert tasks_changed(again) == []
    assert [inspect(n)['Id'] for n in nodes[:1]] == [cp['Id']]

    # detect (tasks_from): a node with /etc/kubernetes or a kubelet process is a real cluster's node, and gets
    # barepod's own pod CIDR, bridge and chain prefix; the others keep kind's defaults.
    sh('docker', 'exec', nodes[1], 'mkdir', '/etc/kubernetes')
    sh('docker', 'exec', '-d', nodes[2], 'sh', '-c', 'cp /bin/sleep /usr/local/bin/kubelet && exec kubelet 600')
    play = inv.parent / 'detect.yml'
    play.write_text(DETECT_PLAY)
    env = ansible_env()
    for _attempt in range(20):  # the detached kubelet stand-in may take a moment to start
        probe = sh('docker', 'exec', nodes[2], 'sh', '-c', 'grep -qsx kubelet /proc/[0-9]*/comm', check=False)
        if probe.returncode == 0:
            break
        time.sleep(0.1)
    p = subprocess.run([os.path.join(BIN, 'ansible-playbook'), '-i', str(inv), str(play)], cwd=REPO, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                       timeout=300, check=False)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    seen = {}
    for play_ in json.loads(p.stdout[p.stdout.index('{'):])['plays']:
        for t in play_['tasks']:
            for host, r in t['hosts'].items():
                if 'barepod_bridge' in r.get('ansible_facts', {}):
                    seen[host] = r['ansible_facts']
    assert {h: (f['barepod_real_cluster_evidence'], f['barepod_pod_subnet'], f['barepod_pod_cidr'],
                f['barepod_bridge'], f['barepod_chain_prefix']) for h, f in seen.items()} == {
        nodes[0]: ('none', '10.244.0.0/16', '10.244.0.0/24', 'cni0', 'KUBE'),
        nodes[1]: ('etc-kubernetes', '10.250.0.0/16', '10.250.1.0/24', 'bp0', 'BPOD'),
        nodes[2]: ('kubelet', '10.250.0.0/16', '10.250.2.0/24', 'bp0', 'BPOD'),
    }

    # Fewer workers: the surplus node goes, the others stay as they are.
    playbook('-e', 'kind_cluster_name=%s' % name, '-e', 'kind_cluster_inventory_file=%s' % inv,
             '-e', 'kind_cluster_workers=1')
    assert containers(name) == sorted(nodes[:2])
    assert inspect(nodes[0])['Id'] == cp['Id']

    # Delete: containers, their cgroups, the inventory, and the network when this run created it.
    playbook('-e', 'kind_cluster_name=%s' % name, '-e', 'kind_cluster_inventory_file=%s' % inv,
             '-e', 'kind_cluster_state=absent')
    assert containers(name) == []
    assert not os.path.exists(host_dir)
    assert not os.path.exists(os.path.dirname(host_dir))
    assert not inv.exists()
    net = network()
    if net_before is None:
        # Ours, and empty, unless another cluster is still using it.
        assert net is None or net['Containers']
    else:
        assert net is not None and net['Id'] == net_before['Id']

    # Deleting again is a no-op.
    gone = playbook('-e', 'kind_cluster_name=%s' % name, '-e', 'kind_cluster_state=absent')
    assert tasks_changed(gone) == []


def test_check_mode_then_an_existing_network_is_reused_and_kept(docker, tmp_path):
    name = 'bpk' + uuid.uuid4().hex[:8]
    net = 'bpnet' + uuid.uuid4().hex[:8]
    inv = tmp_path / 'inv.yml'
    args = ['-e', 'kind_cluster_name=%s' % name, '-e', 'kind_cluster_workers=0', '-e', 'kind_cluster_network=%s' % net,
            '-e', 'kind_cluster_inventory_file=%s' % inv]
    try:
        # --check: reports the changes, makes nothing (no network, no container, no inventory).
        res = playbook('--check', *args)
        assert any('Run the node containers' in t for t in tasks_changed(res))
        assert containers(name) == []
        assert sh('docker', 'network', 'inspect', net, check=False).returncode != 0
        assert not inv.exists()

        # A network that exists already (not made by the role) is used as it is and kept on delete.
        net_id = sh('docker', 'network', 'create', net).stdout.strip()
        playbook(*args)
        c = inspect('%s-control-plane' % name)
        assert list(c['NetworkSettings']['Networks']) == [net]
        assert c['Config']['Labels']['io.x-k8s.kind.role'] == 'control-plane'
        assert inv.exists()
        playbook('-e', 'kind_cluster_state=absent', *args)
        assert containers(name) == []
        assert json.loads(sh('docker', 'network', 'inspect', net).stdout)[0]['Id'] == net_id
        assert not inv.exists()
    finally:
        for c in containers(name):
            sh('docker', 'rm', '-f', '-v', c, check=False)
        sh('docker', 'network', 'rm', net, check=False)
