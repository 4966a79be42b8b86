# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attach/detach latency of veth_net against the CNI bridge plugin (ADD/DEL), same run.

    sudo .venv/bin/python bench/veth_net.py [--rounds 30] [--playbook-rounds 3]

Everything happens inside throwaway network namespaces: this process moves itself into a
"node" namespace it creates, where both the plugin (/usr/lib/cni/bridge + host-local, run as
a runtime runs it: exec, env, JSON on stdin) and veth_net work, on separate bridges and
subnets; each round attaches a fresh pod namespace and detaches it again. Namespace
creation is outside the timed part for both. Measured:

  - veth_net logic: VethNet(params).run() in this process (what the module does after Ansible
    has started it), attach, converged re-run, detach;
  - veth_net module: a fresh interpreter running the module file as Ansible does;
  - optionally ansible-playbook running one veth_net task (--playbook-rounds);
  - CNI: the bridge plugin's ADD and DEL (a fresh Go process each, like kubelet/containerd).

Prints a table of medians and ratios (veth_net / plugin) and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(REPO, '.venv', 'bin', 'python')
CNI_PATH = '/usr/lib/cni'


from _collection import COLLECTIONS as COLL  # noqa: E402 - puts it and tests/ on sys.path

from harness import enter_netns, sh  # noqa: E402 - tests/harness.py


def fmt(x):
    return '-' if x is None else '{0:.2f}'.format(x)


def median_ms(xs):
    return statistics.median(xs) * 1000.0 if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--rounds', type=int, default=30)
    ap.add_argument('--module-rounds', type=int, default=5)
    ap.add_argument('--playbook-rounds', type=int, default=0)
    ap.add_argument('--out', default=os.path.join(REPO, 'bench', 'results'))
    opts = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit('bench/veth_net.py needs root (it creates network namespaces)')
    if not os.path.exists(os.path.join(CNI_PATH, 'bridge')):
        sys.exit('containernetworking-plugins are not installed (%s/bridge)' % CNI_PATH)

    tag = uuid.uuid4().hex[:6]
    node = 'bpbench-node-' + tag
    tmp = tempfile.mkdtemp(prefix='bpbench-')
    made = []

    def new_ns(prefix):
        name = '%s-%s-%d' % (prefix, tag, len(made))
        sh('ip', 'netns', 'add', name, error=RuntimeError)
        made.append(name)
        return name

    def del_ns(name):
        subprocess.run(['ip', 'netns', 'del', name], stderr=subprocess.DEVNULL, check=False)
        if name in made:
            made.remove(name)

    sh('ip', 'netns', 'add', node, error=RuntimeError)
    try:
        original = os.open('/proc/self/ns/net', os.O_RDONLY)
        enter_netns('/run/netns/' + node)  # from here on, every netlink call and child is in the node
        from ansible_collections.barepod.linux.plugins.module_utils._veth import VethNet

        conf = json.dumps({
            'cniVersion': '0.4.0', 'name': 'cnibench', 'type': 'bridge', 'bridge': 'cni0',
            'isGateway': True, 'isDefaultGateway': True, 'ipMasq': True, 'hairpinMode': True, 'mtu': 1500,
            'ipam': {'type': 'host-local', 'dataDir': os.path.join(tmp, 'cni'),
                     'ranges': [[{'subnet': '10.250.0.0/16'}]]}}).encode()

        def cni(cmd, netns, cid):
            env = dict(os.environ, CNI_COMMAND=cmd, CNI_NETNS='/run/netns/' + netns, CNI_IFNAME='eth0',
                       CNI_CONTAINERID=cid, CNI_PATH=CNI_PATH)
            t = time.perf_counter()
            p = subprocess.run([os.path.join(CNI_PATH, 'bridge')], input=conf, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
            dt = time.perf_counter() - t
            if p.returncode != 0:
                raise RuntimeError('bridge %s: %s' % (cmd, p.stdout.decode() + p.stderr.decode()))
            return dt

        def params(uid, netns, state='present'):
            return dict(state=state, pod_uid=uid, netns='/run/netns/' + netns, subnet='10.251.0.0/16',
                        bridge='bp0', network='bpbench', data_dir=os.path.join(tmp, 'bp'),
                        state_root=os.path.join(tmp, 'pods'))

        def ours(uid, netns, state='present'):
            t = time.perf_counter()
            mgr = VethNet(params(uid, netns, state))
            mgr.run()
            return time.perf_counter() - t, mgr.changed

        res = dict(cni_add=[], cni_del=[], bp_add=[], bp_noop=[], bp_del=[], mod_add=[], mod_del=[], pb_add=[])
        # warm-up: bridges, iptables, page cache
        for _unused in range(2):
            ns = new_ns('bpbench-pod')
            cni('ADD', ns, 'warm' + ns)
            cni('DEL', ns, 'warm' + ns)
            ours('warm' + ns.replace('bpbench-pod-', 'x'), ns)
            ours('warm' + ns.replace('bpbench-pod-', 'x'), ns, 'absent')
            del_ns(ns)

        for i in range(opts.rounds):
            # alternate the order so neither side benefits from running second
            order = ('cni', 'bp') if i % 2 == 0 else ('bp', 'cni')
            for who in order:
                ns = new_ns('bpbench-pod')
                cid = str(uuid.uuid4())
                if who == 'cni':
                    res['cni_add'].append(cni('ADD', ns, cid))
                    res['cni_del'].append(cni('DEL', ns, cid))
                else:
                    dt, changed = ours(cid, ns)
                    assert changed
                    res['bp_add'].append(dt)
                    dt, changed = ours(cid, ns)
                    assert not changed
                    res['bp_noop'].append(dt)
                    dt, changed = ours(cid, ns, 'absent')
                    assert changed
                    res['bp_del'].append(dt)
                del_ns(ns)

        env = dict(os.environ, PYTHONPATH=COLL)
        for _round in range(opts.module_rounds):
            ns = new_ns('bpbench-pod')
            cid = str(uuid.uuid4())
            for state, key in (('present', 'mod_add'), ('absent', 'mod_del')):
                with open(os.path.join(tmp, 'args.json'), 'w') as f:
                    json.dump({'ANSIBLE_MODULE_ARGS': params(cid, ns, state)}, f)
                t = time.perf_counter()
                p = subprocess.run([VENV_PY, '-m', 'ansible_collections.barepod.linux.plugins.modules.veth_net',
                                    os.path.join(tmp, 'args.json')], env=env, cwd='/',
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
                res[key].append(time.perf_counter() - t)
                if p.returncode != 0 or '"failed": true' in p.stdout.decode():
                    raise RuntimeError('module: %s %s' % (p.stdout.decode(), p.stderr.decode()))
            del_ns(ns)

        if opts.playbook_rounds:
            pb = os.path.join(tmp, 'pb.yml')
            for _round in range(opts.playbook_rounds):
                ns = new_ns('bpbench-pod')
                p = params(str(uuid.uuid4()), ns)
                with open(pb, 'w') as f:
                    json.dump([{'hosts': 'localhost', 'gather_facts': False, 'connection': 'local',
                                'tasks': [{'barepod.linux.veth_net': p}]}], f)
                penv = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'),
                            ANSIBLE_PYTHON_INTERPRETER=VENV_PY, ANSIBLE_COLLECTIONS_PATH=COLL)
                t = time.perf_counter()
                r = subprocess.run([os.path.join(REPO, '.venv', 'bin', 'ansible-playbook'), '-i', 'localhost,', pb],
                                   env=penv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
                res['pb_add'].append(time.perf_counter() - t)
                if r.returncode != 0:
                    raise RuntimeError('ansible-playbook: %s' % r.stdout.decode()[-2000:])
                ours(p['uid'], ns, 'absent')
                del_ns(ns)

        cni_add, cni_del = median_ms(res['cni_add']), median_ms(res['cni_del'])
        rows = [
            ('attach: veth_net logic vs bridge ADD', median_ms(res['bp_add']), cni_add),
            ('re-run (converged): veth_net logic', median_ms(res['bp_noop']), cni_add),
            ('detach: veth_net logic vs bridge DEL', median_ms(res['bp_del']), cni_del),
            ('attach: veth_net module process', median_ms(res['mod_add']), cni_add),
            ('detach: veth_net module process', median_ms(res['mod_del']), cni_del),
        ]
        if res['pb_add']:
            rows.append(('attach: ansible-playbook, 1 task', median_ms(res['pb_add']), cni_add))
        print('\nveth_net vs CNI bridge+host-local (containernetworking-plugins), medians, '
              '%d rounds (module %d, playbook %d)' % (opts.rounds, opts.module_rounds, opts.playbook_rounds))
        print('%-42s %12s %12s %8s' % ('operation', 'veth_net ms', 'plugin ms', 'ratio'))
        for name, ours_ms, peer in rows:
            if ours_ms is None or peer is None:
                continue
            print('%-42s %12s %12s %8s' % (name, fmt(ours_ms), fmt(peer), fmt(ours_ms / peer)))
        os.makedirs(opts.out, exist_ok=True)
        out = os.path.join(opts.out, 'veth_net-%s.json' % time.strftime('%Y%m%dT%H%M%S'))
        with open(out, 'w') as f:
            json.dump(dict(rounds=opts.rounds, samples_s=res,
                           medians_ms=dict((k, median_ms(v)) for k, v in res.items()),
                           rows=[dict(operation=n, veth_net_ms=a, plugin_ms=b, ratio=(a / b if a else None))
                                 for n, a, b in rows]), f, indent=2)
        print('\nwrote %s' % out)
        os.close(original)
    finally:
        for name in list(made):
            del_ns(name)
        subprocess.run(['ip', 'netns', 'del', node], stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
