"""The node role (playbooks/node.yml) on two "nodes" that are throwaway network namespaces on this host.

Each inventory host runs its modules through a python wrapper that enters its own network namespace
(`nsenter --net`), so the role's sysctls and routes land in that namespace only; the two namespaces are
joined by a veth pair (the "node network", 10.99.0.0/24). Nothing touches the root network namespace:
the sysctl file goes to a throwaway directory, packages and pyroute2 are already there (the probe finds
them; no apt, no copy). Asserts: the routes to the other node's pod CIDR via its address (protocol 98),
ip_forward, no change on a second run, nothing changed in check mode, and node_state=absent removes the
routes.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import ANSIBLE_PLAYBOOK, REPO, ansible_playbook, failed_tasks

NODES = {'node-a': ('10.99.0.2', '10.244.0.0/24'), 'node-b': ('10.99.0.3', '10.244.1.0/24')}


def ip(ns, *args):
    return subprocess.run(['ip', '-n', ns] + list(args), check=True, stdout=subprocess.PIPE,
                          universal_newlines=True).stdout


@pytest.fixture
def two_nodes(netns, tmp_path):
    names = {'node-a': netns('bpna'), 'node-b': netns('bpnb')}
    a, b = names['node-a'], names['node-b']
    # veth between the two namespaces (created in a, one end moved to b): never in the root netns.
    ip(a, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', b)
    for node, ns in names.items():
        ip(ns, 'addr', 'add', NODES[node][0] + '/24', 'dev', 'eth0')
        ip(ns, 'link', 'set', 'eth0', 'up')
        ip(ns, 'link', 'set', 'lo', 'up')
    inventory = {'all': {'hosts': {}}}
    for node, ns in names.items():
        wrapper = tmp_path / ('python-' + node)
        wrapper.write_text('#!/bin/sh\nexec nsenter --net=/run/netns/%s %s "$@"\n' % (ns, sys.executable))
        wrapper.chmod(0o755)
        inventory['all']['hosts'][node] = {
            'ansible_connection': 'local',
            'ansible_python_interpreter': str(wrapper),
            'node_ip': NODES[node][0],
            'node_pod_cidr': NODES[node][1],
            'node_sysctl_file': str(tmp_path / ('sysctl-%s.conf' % node)),
        }
    inv = tmp_path / 'inventory.json'
    inv.write_text(json.dumps(inventory))
    return names, str(inv)


def playbook(inventory, *extra, check=False):
    cmd = [ANSIBLE_PLAYBOOK, '-i', inventory, os.path.join(REPO, 'playbooks', 'node.yml')] + list(extra)
    if check:
        cmd.append('--check')
    rc, res = ansible_playbook(cmd)
    assert rc == 0, json.dumps(failed_tasks(res), indent=1)[:4000]
    return res


def routes(ns):
    # only the routes of protocol 98 (node_routes' own): `ip route show proto 98` lists just those
    return sorted((r['dst'], r.get('gateway')) for r in json.loads(ip(ns, '-j', 'route', 'show', 'proto', '98') or '[]'))


def sysctl(ns, key):
    return subprocess.run(['ip', 'netns', 'exec', ns, 'cat', '/proc/sys/' + key.replace('.', '/')],
                          check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()


def test_node_role_routes_between_two_nodes(two_nodes, tmp_path):
    names, inv = two_nodes
    a, b = names['node-a'], names['node-b']
    for ns in names.values():
        subprocess.run(['ip', 'netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=0'], check=True)

    # check mode first: nothing changes
    playbook(inv, check=True)
    assert routes(a) == [] and routes(b) == []
    assert sysctl(a, 'net.ipv4.ip_forward') == '0'

    res = playbook(inv)
    assert routes(a) == [('10.244.1.0/24', '10.99.0.3')]
    assert routes(b) == [('10.244.0.0/24', '10.99.0.2')]
    for node, ns in names.items():
        assert sysctl(ns, 'net.ipv4.ip_forward') == '1'
        assert 'net.ipv4.ip_forward=1' in (tmp_path / ('sysctl-%s.conf' % node)).read_text()
    assert all(s['changed'] > 0 for s in res['stats'].values())

    # converged: a second run changes nothing
    res = playbook(inv)
    assert {h: s['changed'] for h, s in res['stats'].items()} == {'node-a': 0, 'node-b': 0}

    # the exported facts, as the pod and service roles read them
    shown = [t for play in res['plays'] for t in play['tasks'] if t['task']['name'] == 'Show the node']
    assert '10.99.0.2 pods 10.244.0.0/24' in shown[0]['hosts']['node-a']['msg']

    # absent: the routes go, the sysctl file goes
    playbook(inv, '-e', 'node_state=absent')
    assert routes(a) == [] and routes(b) == []
    assert not (tmp_path / 'sysctl-node-a.conf').exists()


def test_node_role_rejects_bad_input_before_changing_anything(two_nodes):
    names, inv = two_nodes
    rc, res = ansible_playbook([ANSIBLE_PLAYBOOK, '-i', inv, os.path.join(REPO, 'playbooks', 'node.yml'),
                                '-e', 'node_pod_cidr=10.244.300/24'])
    assert rc != 0
    msgs = [str(h.get('msg')) for t in failed_tasks(res) for h in t['hosts'].values()]
    assert any('node_pod_cidr="10.244.300/24"' in m for m in msgs), msgs
    assert routes(names['node-a']) == [] and routes(names['node-b']) == []
