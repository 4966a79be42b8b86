# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kube_svc_rules syncs against raw iptables-save/iptables-restore of the same payload, same run.

    sudo .venv/bin/python bench/svc_rules.py [--quick] [--sizes 1000,10000] [--reps 3]
                                             [--backends nft,legacy]

Everything happens inside throwaway network namespaces: this process moves itself (setns)
into a fresh namespace for every measurement, so each full sync starts from empty tables and
nothing touches the host's own rules. Services have 2 endpoints each (kube-proxy's large
cluster mode kicks in above 1000 endpoints, as it would). Measured, per backend:

  - full sync at each size: kube_svc_rules' logic (render + iptables-save + plan + one
    iptables-restore, i.e. what the module does after Ansible has started it) vs a raw
    `iptables-restore --noflush` of the kube-proxy payload for the same objects;
  - no-op resync at the largest size: the same logic on converged tables vs one iptables-save
    (the least any sync has to do to know nothing changed);
  - one-service change at the largest size (one endpoint moves): the logic vs a raw
    iptables-restore of the same partial payload.

Each figure comes as wall time and as CPU time of the process and its children (steadier on a
loaded machine); the no-op and one-service rows are repeated with the whole module run as
Ansible runs it (a fresh interpreter; objects inline and from a src file), and the module's
own work on a one-service change is broken down step by step.

Prints a table of medians and ratios and writes JSON to bench/results/svc_rules-<time>.json.
Targets (issue 5): no-op <= ~1.5x one iptables-save; one-service change on nft < 0.2 s;
full sync within 1.3x of the raw restore.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import marshal
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLONE_NEWNET = 0x40000000


from _collection import COLLECTIONS  # noqa: E402 - puts it on sys.path

from ansible_collections.barepod.linux.plugins.module_utils import _kpmodel as kpm  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils import _kprender as kpr  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils import _kpsync as kps  # noqa: E402

_libc = ctypes.CDLL(None, use_errno=True)
_made = []


def fresh_netns():
    """Create a throwaway netns and move this process into it."""
    name = 'bpbench%s' % uuid.uuid4().hex[:8]
    subprocess.run(['ip', 'netns', 'add', name], check=True)
    _made.append(name)
    fd = os.open('/run/netns/' + name, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), 'setns ' + name)
    finally:
        os.close(fd)
    # the previous namespace is no longer needed: drop it (we hold no reference to it)
    while len(_made) > 1:
        subprocess.run(['ip', 'netns', 'del', _made.pop(0)], check=False)
    return name


def cleanup():
    for name in _made:
        subprocess.run(['ip', 'netns', 'del', name], check=False)
    shutil.rmtree(STATE_DIR, ignore_errors=True)


def make_objects(n, moved=None):
    """n ClusterIP Services in 10.96.0.0/12 with 2 endpoints each; `moved` gets a new endpoint."""
    objs = []
    for i in range(n):
        name = 'svc-%05d' % i
        ip = '10.%d.%d.%d' % (96 + i // 65536, (i // 256) % 256, i % 256)
        objs.append(dict(kind='Service', metadata=dict(namespace='bench', name=name),
                         spec=dict(clusterIP=ip, ports=[dict(name='http', port=80, protocol='TCP')])))
        a = '10.%d.%d.%d' % (128 + (2 * i) // 65536, ((2 * i) // 256) % 256, (2 * i) % 256)
        b = '10.%d.%d.%d' % (128 + (2 * i + 1) // 65536, ((2 * i + 1) // 256) % 256, (2 * i + 1) % 256)
        if moved == i:
            b = '10.250.0.1'
        objs.append(dict(kind='EndpointSlice',
                         metadata=dict(namespace='bench', name=name + '-x',
                                       labels={'kubernetes.io/service-name': name}),
                         addressType='IPv4', endpoints=[dict(addresses=[a]), dict(addresses=[b])],
                         ports=[dict(name='http', port=8080, protocol='TCP')]))
    return objs


STATE_DIR = tempfile.mkdtemp(prefix='barepod-bench-svc-')
PARAMS = dict(cluster_cidr='10.128.0.0/9', node_name='bench-node', conntrack_tcp_be_liberal=False,
              return_payload=False, state_dir=STATE_DIR)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


CPU = {}   # id(wall list) -> cpu list: CPU seconds (ours + children) beside each wall time


def timed(wall, fn):
    """Run fn(), append its wall time to `wall` and its CPU time (this process + children,
    far less sensitive to the load of other processes) to CPU[id(wall)]; return fn's result."""
    c0, k0, t0 = time.process_time(), children_cpu(), time.perf_counter()
    res = fn()
    wall.append(time.perf_counter() - t0)
    CPU.setdefault(id(wall), []).append(time.process_time() - c0 + children_cpu() - k0)
    return res


def sync(backend, objs, wall, **kw):
    params = dict(PARAMS, objects=objs, backend=backend, **kw)
    return timed(wall, lambda: kps.sync_service_rules(params))


def raw(argv, wall, stdin=None):
    p = timed(wall, lambda: subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           universal_newlines=True, check=False))
    if p.returncode != 0:
        raise RuntimeError('%s: %s' % (' '.join(argv), p.stderr[:500]))


def write_src(objs):
    path = os.path.join(STATE_DIR, 'objects.json')
    with open(path, 'w') as f:
        json.dump(objs, f)
    return path


def module_process(backend, objs, wall, **kw):
    """The whole module as Ansible runs it: a fresh interpreter, imports, argument parsing."""
    args = dict(PARAMS, objects=objs, backend=backend, **kw)
    with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as f:
        json.dump({'ANSIBLE_MODULE_ARGS': args}, f)
    env = dict(os.environ, PYTHONPATH=COLLECTIONS)
    try:
        p = timed(wall, lambda: subprocess.run(
            [sys.executable, '-m', 'ansible_collections.barepod.linux.plugins.modules.kube_svc_rules', f.name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd='/', check=False))
    finally:
        os.unlink(f.name)
    out = p.stdout.decode(errors='replace')
    return json.loads(out[out.find('{'):])


def med(xs):
    return statistics.median(xs) if xs else None


def breakdown(n, reps, backend):
    """The pieces of the module's own work on a one-service change, timed one by one."""
    objs = json.loads(json.dumps(make_objects(n, moved=n // 2)))   # as Ansible hands them over
    st = kpm.Settings(cluster_cidr=PARAMS['cluster_cidr'], node_name='bench-node')
    bodies = [os.path.join(STATE_DIR, f) for f in os.listdir(STATE_DIR) if f.endswith('.body')]
    with open(max(bodies, key=os.path.getsize), 'rb') as f:
        body_bytes = f.read()
    body = marshal.loads(body_bytes)
    digests = kps.object_digests(objs)
    hit = kps.changed_by_object(objs, digests, body)
    assert hit is not None and list(hit[0]) == ['bench/svc-%05d' % (n // 2)], hit and list(hit[0])
    one = hit[1]['bench/svc-%05d' % (n // 2)]
    steps = [
        ('encode every object (marshal)', lambda: kps.object_digests(objs)),
        ('find the changed Service from the per-object fingerprints',
         lambda: kps.changed_by_object(objs, digests, body)),
        ('(only when objects moved: group all by Service instead)', lambda: kps.group_by_service(objs, digests)),
        ('validate and render the one changed Service',
         lambda: kpr._render(*kpm.load(one, 'bench-node')[:2], st, large=True, track={})),
        ('read the record body (%d bytes of marshal)' % len(body_bytes), lambda: marshal.loads(body_bytes)),
        ('write the record body', lambda: marshal.dumps(body, 2)),
        ('iptables -S of the canary chain (fork+exec)', lambda: subprocess.run(
            ['iptables-%s' % backend, '-t', 'mangle', '-S', 'KUBE-PROXY-CANARY'], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, check=False)),
    ]
    out = []
    for what, fn in steps:
        xs = []
        timed(xs, fn)
        for _rep in range(max(2, reps)):
            timed(xs, fn)
        out.append((what, med(CPU[id(xs)])))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--quick', action='store_true', help='sizes 100,1000 and 1 repetition of the big ones')
    ap.add_argument('--sizes', default=None, help='comma separated service counts (default 1000,10000)')
    ap.add_argument('--reps', type=int, default=3, help='repetitions of the cheap measurements')
    ap.add_argument('--big-reps', type=int, default=1,
                    help='repetitions of full syncs of 5000+ services on nft (~40 s each)')
    ap.add_argument('--backends', default='nft,legacy')
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit('needs root (it works only inside network namespaces it creates)')
    sizes = [int(s) for s in (args.sizes or ('100,1000' if args.quick else '1000,10000')).split(',')]
    backends = args.backends.split(',')
    rows = []
    results = dict(sizes=sizes, endpoints_per_service=2, backends={}, started=time.strftime('%FT%TZ', time.gmtime()))

    def row(backend, what, ours, peer_name, peer, extra=None):
        rows.append((backend, what, med(ours), med(CPU.get(id(ours))), peer_name, med(peer),
                     med(CPU.get(id(peer))) if peer is not None else None))
        results['backends'][backend][what] = dict(ours=ours, ours_cpu=CPU.get(id(ours)), peer=peer_name,
                                                  peer_wall=peer, peer_cpu=CPU.get(id(peer)), **(extra or {}))
        print(rows[-1], flush=True)
    try:
        for backend in backends:
            restore = ['iptables-%s-restore' % backend, '-w', '5', '--noflush', '--counters']
            save = ['iptables-%s-save' % backend]
            results['backends'][backend] = {}
            for n in sizes:
                objs = make_objects(n)
                payload = kpr.render(objs, kpm.Settings(cluster_cidr=PARAMS['cluster_cidr'],
                                                      node_name='bench-node')).payload()
                reps = args.reps if (backend == 'legacy' or n < 5000) else args.big_reps
                ours, peer = [], []
                for _rep in range(reps):
                    fresh_netns()
                    raw(restore, peer, payload)
                    fresh_netns()
                    res = sync(backend, objs, ours)
                    assert res['changed'] and res['restores'] == 1
                row(backend, 'full sync %d svc' % n, ours, 'raw iptables-restore', peer)
            n = sizes[-1]
            objs = make_objects(n)
            # converged at the largest size (we are in the netns of the last full sync)
            noop, saves, modes = [], [], []
            for _rep in range(args.reps):
                raw(save, saves)
                res = sync(backend, objs, noop)
                assert not res['changed'] and res['restores'] == 0, res['chains']
                modes.append('%s/%s' % (res['sync'], res.get('render')))
            row(backend, 'no-op resync %d svc' % n, noop, 'one iptables-save', saves, dict(sync=modes))
            proc = []
            for _rep in range(args.reps):
                res = module_process(backend, objs, proc)
                assert not res.get('failed') and not res['changed'] and res['restores'] == 0, res
            row(backend, 'no-op %d svc, module process' % n, proc, 'one iptables-save', saves)
            src = write_src(objs)
            proc = []
            for _rep in range(args.reps):
                res = module_process(backend, [], proc, src=[src])
                assert not res.get('failed') and not res['changed'] and res['restores'] == 0, res
            row(backend, 'no-op %d svc, module process, src file' % n, proc, 'one iptables-save', saves)
            always = []
            for _rep in range(args.reps):
                res = sync(backend, objs, always, resync='always')
                assert not res['changed'] and res['sync'] == 'iptables-save'
            row(backend, 'no-op, resync=always %d svc' % n, always, 'one iptables-save', saves)
            change, peer, proc, proc_src, modes = [], [], [], [], []
            for r in range(args.reps):
                moved = make_objects(n, moved=n // 2 + r)
                res = sync(backend, moved, change)
                assert res['changed'] and res['restores'] == 1
                modes.append(res.get('render'))
                # the same partial payload, raw: first put the old state back, then time it
                back_params = dict(PARAMS, objects=objs, backend=backend)
                kps.sync_service_rules(back_params)
                raw(restore, peer, res['restore_payload'])
                kps.sync_service_rules(back_params)
                res2 = module_process(backend, moved, proc)
                assert res2['changed'] and res2['restores'] == 1, res2
                kps.sync_service_rules(back_params)
                res2 = module_process(backend, [], proc_src, src=[write_src(moved)])
                assert res2['changed'] and res2['restores'] == 1, res2
                kps.sync_service_rules(back_params)
            row(backend, 'one-service change %d svc' % n, change, 'raw restore of same partial payload', peer,
                dict(chains=res['chains'], render=modes))
            row(backend, 'one-service change %d svc, module process' % n, proc,
                'raw restore of same partial payload', peer)
            row(backend, 'one-service change %d svc, module, src file' % n, proc_src,
                'raw restore of same partial payload', peer)
        results['one_change_breakdown'] = breakdown(sizes[-1], args.reps, backends[-1])
    finally:
        cleanup()

    print()
    print('where a one-service change at %d services goes (in-process, median CPU seconds, %s):'
          % (sizes[-1], backends[-1]))
    for what, cpu in results['one_change_breakdown']:
        print('  %-58s %8.4f' % (what, cpu))
    print()
    print('wall = median elapsed seconds; cpu = median CPU seconds of the process and its children')
    print('%-7s %-44s %8s %8s  %-36s %8s %8s %7s %7s' % ('backend', 'measurement', 'ours', 'ours cpu', 'peer',
                                                       'peer', 'peer cpu', 'ratio', 'cpu rt'))
    for backend, what, ours, ocpu, peer_name, peer, pcpu in rows:
        print('%-7s %-44s %8.4f %8.4f  %-36s %8.4f %8.4f %7.2f %7.2f' % (
            backend, what, ours, ocpu, peer_name, peer, pcpu, ours / peer, ocpu / pcpu if pcpu else float('nan')))
    results['table'] = [dict(backend=b, measurement=w, ours_s=o, ours_cpu_s=oc, peer=pn, peer_s=p, peer_cpu_s=pc,
                             ratio=o / p, cpu_ratio=(oc / pc if pc else None))
                        for b, w, o, oc, pn, p, pc in rows]
    out = os.path.join(REPO, 'bench', 'results')
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, 'svc_rules-%s.json' % time.strftime('%Y%m%dT%H%M%S'))
    with open(path, 'w') as f:
        json.dump(results, f, indent=2)
    print('\nJSON: %s' % path)


if __name__ == '__main__':
    main()
