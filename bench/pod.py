# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pod bring-up of the chapter's pod against `docker run`, and no-op converges of 1 and 20 pods.

    sudo .venv/bin/python bench/pod.py [--runs 5] [--pods 5] [--noop-pods 20] [--noop-runs 3]
    sudo .venv/bin/python bench/pod.py --quick

Everything of ours runs inside a throwaway "node" network namespace this process moves into
(bridge, veths, iptables rules live there; the root netns is never touched), with every state
root in a temporary directory under /var/lib/barepod/bench (the hostPath dir in /tmp) and the
cgroups under a unique parent, as tests/integration/test_pod_role.py does. The pod is examples/demo-pod.yaml (busybox, sleep, a
hostPath dir of the bench's own at /data, 100Mi request / 200Mi limit), renamed per run.

Measured, in the same run:

  ansible-playbook     playbooks/pod_up.yml bringing one pod up (a fresh ansible-playbook each time)
  modules in-process   the module_utils managers the role's tasks run, in the role's order and with
                       the role's arguments (pod_module_args): record, rootfs, sandbox, pod and
                       container cgroups, veth_net, containers, status; no Python start, no Ansible
  docker run --rm      an equivalent container: `docker run --rm -m 200m --memory-reservation 100m
                       -v <dir>:/data <busybox image> true`, the image imported offline from a tar
                       of the host's busybox-static (no registry is reachable)
  each further pod     bring-up of pods 1..N: the in-process time per pod, and through one
                       ansible-playbook of N pods ((t_N - t_1) / (N - 1))
  no-op converge       pod_up.yml on 1 and on 20 pods already up (changed=0 is checked)

Prints a table of medians and ratios (against docker run for bring-up; against the 10 s target
for the 20-pod no-op) and writes JSON to bench/results/. Never asserts on time.
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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUSYBOX = '/bin/busybox'
DOCKER_IMAGE = 'barepod/bench-busybox:latest'
NOOP_TARGET_S = 10.0
BENCH_ROOT = '/var/lib/barepod/bench'


from _collection import COLLECTIONS as COLL  # noqa: E402,F401 - puts it and tests/ on sys.path

import harness  # noqa: E402 - tests/harness.py
from harness import enter_netns  # noqa: E402

from ansible_collections.barepod.linux.plugins.filter.pod import ROLE_DEFAULTS, pod_module_args  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils._podconverge import (  # noqa: E402
    run_module_logic, with_inputs)


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x, unit=1.0):
    return '-' if x is None else '{0:.3f}'.format(x * unit)


class Node(harness.Node):
    """tests/harness.py's throwaway node (netns, state roots in a tmp dir, a unique cgroup parent),
    with the modules run in-process as the role runs them, and playbooks timed. This process
    moves into the node's netns, so playbooks run without nsenter."""

    def __init__(self):
        # under /var/lib/barepod, beside the default rootfs root (/var/lib/barepod/rootfs) and
        # docker's /var/lib/docker: directory creation under /tmp is several times slower on some
        # hosts (measured here: 270 symlinks 0.35 s in /tmp, 0.03 s in /var/lib)
        os.makedirs(BENCH_ROOT, exist_ok=True)
        hostdir = tempfile.mkdtemp(prefix='bpbench-host-')  # hostPath: /var/lib is a protected path
        with open(os.path.join(hostdir, 'from-host.txt'), 'w') as f:
            f.write('hello from the host\n')
        super().__init__(tempfile.mkdtemp(prefix='bpbench-pod-', dir=BENCH_ROOT), netns_prefix='bpbench-node-',
                         cgroup_prefix='barepod-bench-', hostdir=hostdir, prepare=False, nsenter=False,
                         pod_subnet='10.244.0.0/22')
        # the pods this process starts in-process carry the node's marker too, so cleanup() finds them
        os.environ[harness.MARKER] = self.id
        # the role's settings, as the pod role passes them to pod_module_args
        self.settings = dict(ROLE_DEFAULTS, **dict((k[4:], v) for k, v in self.vars.items()))
        self.settings['node'] = 'localhost'

    # -- through ansible-playbook
    def timed(self, name, files, expect_changed=None):
        """-> (seconds ansible-playbook ran, stats, module tasks run)"""
        stats, res = self.run(name, files, timeout=None)
        if expect_changed is not None and bool(stats['changed']) != expect_changed:
            raise RuntimeError('%s: expected changed=%s, got %s' % (name, expect_changed, stats))
        return self.last_seconds, stats, len(harness.module_tasks_run(res))

    # -- the modules alone, in this process (what each task does once Ansible has started the module)
    def modules_up(self, name):
        a = pod_module_args(self.manifests[name], self.settings)
        t = time.perf_counter()
        known = {}
        known['record'] = run_module_logic('pod_status', a['record'], False)
        for args in with_inputs('rootfs', a['rootfs'], known):
            run_module_logic('chroot_rootfs', args, False)
        known['sandbox'] = run_module_logic('ns_sandbox', a['sandbox'], False)
        run_module_logic('cgroup_limit', a['cgroup_pod'], False)
        known['cgroup_containers'] = [run_module_logic('cgroup_limit', c, False) for c in a['cgroup_containers']]
        known['network'] = run_module_logic('veth_net', with_inputs('network', a['network'], known), False)
        if ((known['record'].get('status') or {}).get('podIP')) != known['network']['ip']:
            for args in with_inputs('hosts', a['hosts'], known):
                run_module_logic('chroot_rootfs', args, False)
        run_module_logic('ns_sandbox', with_inputs('containers', a['containers'], known), False)
        st = run_module_logic('pod_status', a['status'], False)
        dt = time.perf_counter() - t
        if st['status']['phase'] != 'Running':
            raise RuntimeError('pod %s is %s' % (name, st['status']['phase']))
        return dt

    def modules_down(self, name):
        """absent.yml's steps, in-process (also the cleanup of every pod)."""
        a = pod_module_args(self.manifests[name], self.settings)
        ident, s = a['identity'], self.settings
        common = dict(namespace=ident['namespace'], name=ident['name'], state_root=s['state_root'])
        run_module_logic('ns_sandbox', dict(common, uid=ident['uid'], state='absent', grace_period=1,
                                            netns_dir=s['netns_dir'], log_root=s['log_root']), False)
        run_module_logic('veth_net', dict(common, uid=ident['uid'], state='absent', network=s['network'],
                                          netns='%s/barepod-%s' % (s['netns_dir'], ident['uid'].replace('-', '')[:8]),
                                          bridge=s['bridge'],
                                          data_dir=s['cni_data_dir']), False)
        cg = dict(common, pod_uid=ident['uid'], state='absent', on_processes='kill', parent=s['cgroup_parent'],
                  cgroup_root=s['cgroup_root'])
        for c in a['cgroup_containers']:
            run_module_logic('cgroup_limit', dict(cg, container=c['container']), False)
        run_module_logic('cgroup_limit', cg, False)
        for r in a['rootfs']:
            run_module_logic('chroot_rootfs', dict(common, state='absent', pod_uid=ident['uid'],
                                                   container=r['container'], rootfs_root=s['rootfs_root']), False)
        shutil.rmtree(os.path.join(s['rootfs_root'], ident['uid']), ignore_errors=True)
        shutil.rmtree(os.path.join(s['log_root'], '%s_%s_%s' % (ident['namespace'], ident['name'], ident['uid'])),
                      ignore_errors=True)
        run_module_logic('pod_status', dict(name=ident['name'], namespace=ident['namespace'], state='absent',
                                            state_root=s['state_root']), False)

    def down_all(self):
        """Every pod ever made, down in-process (in the node's netns; cleanup() does the rest)."""
        for name in list(self.manifests):
            try:
                self.modules_down(name)
            except Exception as e:  # noqa: BLE001 - fall through to the by-pid cleanup
                print('cleanup of %s: %s' % (name, e), file=sys.stderr)


# -- docker
def docker_ready():
    if not shutil.which('docker'):
        return 'the docker CLI is not installed'
    if subprocess.run(['docker', 'info'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                      check=False).returncode != 0:
        subprocess.run([os.path.join(REPO, 'tools', 'start-dockerd.sh')], check=False)
        if subprocess.run(['docker', 'info'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          check=False).returncode != 0:
            return 'dockerd is not running (tools/start-dockerd.sh failed)'
    if subprocess.run(['docker', 'image', 'inspect', DOCKER_IMAGE], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL, check=False).returncode != 0:
        # a busybox image made offline: a tar of the host's busybox-static, then docker import
        d = tempfile.mkdtemp(prefix='bpbench-img-')
        try:
            os.makedirs(os.path.join(d, 'bin'))
            shutil.copy(BUSYBOX, os.path.join(d, 'bin', 'busybox'))
            for a in ('sh', 'true', 'sleep', 'ls', 'cat', 'ps'):
                os.symlink('busybox', os.path.join(d, 'bin', a))
            for sub in ('proc', 'sys', 'dev', 'etc', 'tmp', 'data'):
                os.makedirs(os.path.join(d, sub))
            tar = subprocess.run(['tar', '-C', d, '-c', '.'], stdout=subprocess.PIPE, check=True).stdout
            subprocess.run(['docker', 'import', '-', DOCKER_IMAGE], input=tar, stdout=subprocess.DEVNULL,
                           check=True)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return None


def docker_run(hostdir):
    t = time.perf_counter()
    p = subprocess.run(['docker', 'run', '--rm', '-m', '200m', '--memory-reservation', '100m',
                        '-v', hostdir + ':/data', DOCKER_IMAGE, 'true'],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError('docker run: %s' % p.stderr.decode())
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--runs', type=int, default=5, help='bring-ups per contender')
    ap.add_argument('--pods', type=int, default=5, help='N for the cost of each further pod')
    ap.add_argument('--noop-pods', type=int, default=20)
    ap.add_argument('--noop-runs', type=int, default=3)
    ap.add_argument('--quick', action='store_true', help='--runs 3 --pods 3 --noop-runs 2')
    ap.add_argument('--no-docker', action='store_true')
    ap.add_argument('--noop-only', action='store_true', help='only the no-op converges (after one warm-up)')
    ap.add_argument('--out', default=os.path.join(REPO, 'bench', 'results'))
    o = ap.parse_args()
    if o.quick:
        o.runs, o.pods, o.noop_runs = 3, 3, 2
    if os.geteuid() != 0:
        sys.exit('bench/pod.py needs root (namespaces, cgroups, mounts)')

    docker_err = 'skipped (--no-docker)' if o.no_docker else docker_ready()
    node = Node()  # after docker_ready(): a dockerd it starts must not carry the node's marker
    res = dict(pb_up=[], pb_down=[], mod_up=[], mod_down=[], docker=[], marginal_mod=[], pb_n=[],
               noop_1=[], noop_n=[], noop_modules_1=[], noop_modules_n=[])
    n_seq = [0]

    def fresh(prefix):
        n_seq[0] += 1
        return '%s-%d' % (prefix, n_seq[0])

    original = os.open('/proc/self/ns/net', os.O_RDONLY)
    try:
        enter_netns('/run/netns/' + node.netns)  # every netlink call and child from here on is in the node
        # warm-up: bridge, iptables chains, pause binary, page cache, AnsiballZ cache
        w = fresh('warm')
        node.timed('pod_up.yml', [node.manifest(w)])
        node.modules_down(w)
        w = fresh('warm')
        node.manifest(w)
        node.modules_up(w)
        node.modules_down(w)
        if docker_err is None:
            docker_run(node.hostdir)

        for i in range(0 if o.noop_only else o.runs):
            order = ('pb', 'mod', 'docker') if i % 2 == 0 else ('docker', 'mod', 'pb')
            for who in order:
                if who == 'pb':
                    name = fresh('pb')
                    f = node.manifest(name)
                    res['pb_up'].append(node.timed('pod_up.yml', [f], expect_changed=True)[0])
                    res['pb_down'].append(node.timed('pod_down.yml', [f], expect_changed=True)[0])
                elif who == 'mod':
                    name = fresh('mod')
                    node.manifest(name)
                    res['mod_up'].append(node.modules_up(name))
                    t = time.perf_counter()
                    node.modules_down(name)
                    res['mod_down'].append(time.perf_counter() - t)
                elif docker_err is None:
                    res['docker'].append(docker_run(node.hostdir))

        # each further pod: in-process, pods 1..N side by side
        names = []
        for _k in range(0 if o.noop_only else o.pods):
            name = fresh('many')
            node.manifest(name)
            names.append(name)
            res['marginal_mod'].append(node.modules_up(name))
        for name in names:
            node.modules_down(name)
        # ... and through ansible-playbook: one playbook of 1 pod, one of N pods
        for k in () if o.noop_only else (1, o.pods):
            fs = [node.manifest(fresh('pbn')) for _unused in range(k)]
            res['pb_n'].append(dict(pods=k, seconds=node.timed('pod_up.yml', fs, expect_changed=True)[0]))
            node.timed('pod_down.yml', fs)

        # no-op converge of 1 and of N pods (brought up once beforehand)
        fs = [node.manifest(fresh('noop')) for _unused in range(o.noop_pods)]
        t = time.perf_counter()
        node.timed('pod_up.yml', fs, expect_changed=True)
        res['noop_bringup_all'] = time.perf_counter() - t
        for _r in range(o.noop_runs):
            dt, _stats, mods = node.timed('pod_up.yml', fs[:1], expect_changed=False)
            res['noop_1'].append(dt)
            res['noop_modules_1'].append(mods)
            dt, _stats, mods = node.timed('pod_up.yml', fs, expect_changed=False)
            res['noop_n'].append(dt)
            res['noop_modules_n'].append(mods)
        t = time.perf_counter()
        for f in fs:
            node.modules_down(os.path.basename(f)[:-len('.yaml')])
        res['noop_teardown_all_modules'] = time.perf_counter() - t
    finally:
        node.down_all()  # in the node netns
        enter_netns('/proc/self/fd/%d' % original)
        os.close(original)
        node.cleanup()

    docker = med(res['docker'])
    t1 = [x['seconds'] for x in res['pb_n'] if x['pods'] == 1]
    tn = [x['seconds'] for x in res['pb_n'] if x['pods'] == o.pods]
    pb_marginal = (tn[0] - t1[0]) / (o.pods - 1) if t1 and tn and o.pods > 1 else None
    further = res['marginal_mod'][1:] or res['marginal_mod']
    rows = [
        ('bring-up: ansible-playbook pod_up.yml', med(res['pb_up']), docker),
        ('bring-up: modules in-process', med(res['mod_up']), docker),
        ('bring-up: docker run --rm (true)', docker, docker),
        ('each further pod: modules in-process', med(further), docker),
        ('each further pod: ansible-playbook', pb_marginal, docker),
        ('teardown: ansible-playbook pod_down.yml', med(res['pb_down']), docker),
        ('teardown: modules in-process', med(res['mod_down']), docker),
        ('no-op converge, 1 pod: ansible-playbook', med(res['noop_1']), NOOP_TARGET_S),
        ('no-op converge, %d pods: ansible-playbook' % o.noop_pods, med(res['noop_n']), NOOP_TARGET_S),
    ]
    print('\npod bring-up (examples/demo-pod.yaml) vs docker run, medians of %d runs; no-op of 1 and %d pods, '
          'medians of %d runs' % (o.runs, o.noop_pods, o.noop_runs))
    if docker_err:
        print('docker: %s' % docker_err)
    print('%-44s %10s %12s %8s' % ('operation', 'seconds', 'vs', 'ratio'))
    for name, ours, peer in rows:
        peer_name = '10 s target' if peer == NOOP_TARGET_S else 'docker run'
        ratio = fmt(ours / peer) if ours is not None and peer else '-'
        print('%-44s %10s %12s %8s' % (name, fmt(ours), peer_name if peer else '-', ratio))
    print('module tasks run by a no-op converge: %s (1 pod), %s (%d pods)'
          % (med(res['noop_modules_1']), med(res['noop_modules_n']), o.noop_pods))
    os.makedirs(o.out, exist_ok=True)
    out = os.path.join(o.out, 'pod-%s.json' % time.strftime('%Y%m%dT%H%M%S'))
    with open(out, 'w') as f:
        json.dump(dict(runs=o.runs, pods=o.pods, noop_pods=o.noop_pods, noop_runs=o.noop_runs, docker_error=docker_err,
                       samples_s=res, rows=[dict(operation=n, seconds=a, peer_seconds=b,
                                                 ratio=(a / b if a is not None and b else None))
                                            for n, a, b in rows]), f, indent=2)
    print('\nwrote %s' % out)


if __name__ == '__main__':
    main()
