#!/usr/bin/env python3
"""Benchmark: audit a synthetic tree of 10,000 cgroups with cgroup_info, against plainly reading
the same files with `find <tree> -type f ( -name f1 -o -name f2 ... ) -exec cat {} +`.

One command:  .venv/bin/python bench/cgroup_audit.py [--cgroups 10000] [--runs 5]

The trees are FIXTURE directories on tmpfs (/dev/shm), laid out like the kubelet cgroupfs
layout kubepods/{burstable,besteffort,}/pod<uid>/<container> with the files a kernel shows
(the ones the audit reads plus some it does not, such as memory.stat and io.stat, so `find`
has to filter as the audit does). Creating 10,000 real memory cgroups would disturb the
host, so the real-kernel behaviour is covered by tests/integration/test_cgroup_info.py.

Scenarios:
  v2    FIXTURE: one unified tree (cgroup.procs + 9 files per cgroup)
  v1    FIXTURE: four controller trees (memory, cpu, cpuacct, pids; 14 files per cgroup)
  real  REAL cgroup v1 hierarchies of this host (as root): --real N empty cgroups (default 2000)
        made under a uniquely named parent barepod-bench-<rand> in memory, cpu, cpuacct and pids,
        removed afterwards

Contenders (each timed --runs times; medians):
  cgroup_info logic   run_info() in-process: walk + read + parse + policy checks
  cgroup_info module  the module in a fresh interpreter, as Ansible runs it (report=none)
  find -exec cat      find with the same name filter, cat of every matched file to /dev/null

Prints a table of medians and the ratio against find -exec cat; target: logic within 2x.
Writes JSON to bench/results/cgroup_audit.json.
"""
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

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests'))

from conftest import run_module  # noqa: E402

from ansible_collections.barepod.linux.plugins.module_utils._cgaudit import (  # noqa: E402
    V1_FILES, V2_FILES, run_info)

V2_CONTENT = {
    'memory.max': '209715200\n', 'memory.current': '1048576\n', 'memory.peak': '2097152\n',
    'memory.events': 'low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\noom_group_kill 0\n',
    'cpu.weight': '35\n', 'cpu.max': '50000 100000\n',
    'cpu.stat': 'usage_usec 1234\nuser_usec 1000\nsystem_usec 234\nnr_periods 10\nnr_throttled 1\n'
                'throttled_usec 55\nnr_bursts 0\nburst_usec 0\n',
    'pids.max': 'max\n', 'pids.current': '1\n', 'cgroup.procs': '4242\n',
}
V2_NOISE = {
    'cgroup.controllers': 'cpuset cpu io memory pids\n', 'cgroup.subtree_control': '\n',
    'cgroup.events': 'populated 1\nfrozen 0\n', 'io.stat': '',
    'memory.stat': ''.join('%s %d\n' % (k, i) for i, k in enumerate(
        ('anon file kernel kernel_stack pagetables sec_pagetables percpu sock vmalloc shmem file_mapped '
         'file_dirty file_writeback swapcached anon_thp file_thp shmem_thp inactive_anon active_anon '
         'inactive_file active_file unevictable slab_reclaimable slab_unreclaimable slab').split())),
}
V1_CONTENT = {
    'memory': {'memory.limit_in_bytes': '209715200\n', 'memory.usage_in_bytes': '1048576\n',
               'memory.max_usage_in_bytes': '2097152\n', 'memory.failcnt': '0\n',
               'memory.oom_control': 'oom_kill_disable 0\nunder_oom 0\noom_kill 0\n',
               'cgroup.procs': '4242\n', 'memory.stat': V2_NOISE['memory.stat'], 'tasks': '4242\n'},
    'cpu': {'cpu.shares': '256\n', 'cpu.cfs_quota_us': '50000\n', 'cpu.cfs_period_us': '100000\n',
            'cpu.stat': 'nr_periods 10\nnr_throttled 1\nthrottled_time 55000\n', 'cgroup.procs': '4242\n',
            'tasks': '4242\n'},
    'cpuacct': {'cpuacct.usage': '1234000\n', 'cpuacct.stat': 'user 1\nsystem 1\n', 'cgroup.procs': '4242\n'},
    'pids': {'pids.max': 'max\n', 'pids.current': '1\n', 'cgroup.procs': '4242\n'},
}


def layout(n):
    """Relative paths of n cgroups in the kubelet layout (3 per pod: pod + 2 containers)."""
    rels = ['kubepods', 'kubepods/burstable', 'kubepods/besteffort']
    i = 0
    while len(rels) < n:
        qos = ('', 'burstable/', 'besteffort/')[i % 3]
        pod = 'kubepods/%spod%08x-0000-4000-8000-%012x' % (qos, i, i)
        rels.append(pod)
        for c in ('app', 'sidecar'):
            if len(rels) < n:
                rels.append(pod + '/' + c)
        i += 1
    return rels[:n]


def build_tree(base, rels, files):
    os.makedirs(base, exist_ok=True)
    for name, content in files.items():
        with open(os.path.join(base, name), 'w') as f:
            f.write(content)
    for rel in rels:
        d = os.path.join(base, rel)
        os.mkdir(d)
        for name, content in files.items():
            with open(os.path.join(d, name), 'w') as f:
                f.write(content)


def timed(fn, runs):
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def find_cat(dirs, names):
    expr = []
    for n in names:
        expr += ['-o', '-name', n] if expr else ['-name', n]
    cmd = ['find'] + dirs + ['-type', 'f', '('] + expr + [')', '-exec', 'cat', '{}', '+']
    return lambda: subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)


def real_scenario(a, made):
    parent = 'barepod-bench-%s' % uuid.uuid4().hex[:8]
    ctrls = ('memory', 'cpu', 'cpuacct', 'pids')
    rels = [parent + '/' + r for r in layout(a.real)]
    t0 = time.perf_counter()
    for c in ctrls:
        top = os.path.join('/sys/fs/cgroup', c, parent)
        os.mkdir(top)
        made.append(top)
        for r in rels:
            os.mkdir(os.path.join('/sys/fs/cgroup', c, r))
    build_s = time.perf_counter() - t0
    params = dict(path=parent, node_memory='64Gi', report='all')
    res = run_info(params)
    assert res['summary']['cgroups'] == a.real + 1, res['summary']
    dirs = [os.path.join('/sys/fs/cgroup', c, parent) for c in ctrls]
    names = sorted(set(f for fs in V1_FILES.values() for f in fs) | {'cgroup.procs'})
    # a cgroupfs directory holds every controller file: filter by name as the audit does
    nfiles = int(subprocess.run(
        'find %s -type f \\( %s \\) | wc -l' % (' '.join(dirs), ' -o '.join('-name %s' % n for n in names)),
        shell=True, stdout=subprocess.PIPE, check=True).stdout)
    peer = timed(find_cat(dirs, names), a.runs)
    logic = timed(lambda: run_info(params), a.runs)
    mod = timed(lambda: run_module('cgroup_info', dict(params, report='none')), max(1, min(a.runs, 3)))
    r = {'files_read': nfiles, 'build_seconds': round(build_s, 2), 'cgroups': a.real + 1,
         'find_exec_cat': statistics.median(peer), 'cgroup_info_logic': statistics.median(logic),
         'cgroup_info_module': statistics.median(mod), 'violations': res['summary']['violations']}
    r['ratio_logic'] = r['cgroup_info_logic'] / r['find_exec_cat']
    r['ratio_module'] = r['cgroup_info_module'] / r['find_exec_cat']
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--cgroups', type=int, default=10000)
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--scenarios', default='v2,v1,real')
    ap.add_argument('--real', type=int, default=2000, help='cgroups in the real-kernel scenario')
    a = ap.parse_args()
    made = []
    base = tempfile.mkdtemp(prefix='barepod-bench-cg-', dir='/dev/shm' if os.path.isdir('/dev/shm') else None)
    rels = layout(a.cgroups)
    results = {'cgroups': a.cgroups, 'runs': a.runs, 'tree': 'fixture directory on tmpfs', 'scenarios': {}}
    try:
        for sc in a.scenarios.split(','):
            root = os.path.join(base, sc)
            t0 = time.perf_counter()
            if sc == 'real':
                if os.geteuid() != 0 or not os.path.isdir('/sys/fs/cgroup/memory'):
                    print('skipping the real scenario: needs root and cgroup v1 memory hierarchy')
                    continue
                results['scenarios'][sc] = real_scenario(a, made)
                continue
            if sc == 'v2':
                files = dict(V2_CONTENT, **V2_NOISE)
                build_tree(root, rels, files)
                dirs = [root]
                names = list(V2_FILES) + ['cgroup.procs']
                params = dict(cgroup_root=root, hierarchy='v2', path='kubepods', node_memory='64Gi', report='all')
            else:
                for ctrl, files in V1_CONTENT.items():
                    build_tree(os.path.join(root, ctrl), rels, files)
                dirs = [os.path.join(root, c) for c in V1_CONTENT]
                names = sorted(set(f for fs in V1_FILES.values() for f in fs) | {'cgroup.procs'})
                params = dict(cgroup_root=root, hierarchy='v1', path='kubepods', node_memory='64Gi', report='all')
            build_s = time.perf_counter() - t0
            res = run_info(params)
            assert res['summary']['cgroups'] == a.cgroups, res['summary']
            nfiles = int(subprocess.run(
                'find %s -type f \\( %s \\) | wc -l' % (' '.join(dirs), ' -o '.join('-name %s' % n for n in names)),
                shell=True, stdout=subprocess.PIPE, check=True).stdout)
            peer = timed(find_cat(dirs, names), a.runs)
            logic = timed(lambda p=params: run_info(p), a.runs)
            mod = timed(lambda p=params: run_module('cgroup_info', dict(p, report='none')), max(1, min(a.runs, 3)))
            r = {'files_read': nfiles, 'build_seconds': round(build_s, 2),
                 'find_exec_cat': statistics.median(peer), 'cgroup_info_logic': statistics.median(logic),
                 'cgroup_info_module': statistics.median(mod),
                 'violations': res['summary']['violations']}
            r['ratio_logic'] = r['cgroup_info_logic'] / r['find_exec_cat']
            r['ratio_module'] = r['cgroup_info_module'] / r['find_exec_cat']
            results['scenarios'][sc] = r
    finally:
        shutil.rmtree(base, ignore_errors=True)
        for top in made:
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                os.rmdir(dirpath)
    print('cgroup audit: %d cgroups in the fixture trees (tmpfs), %d in the real one; median of %d runs'
          % (a.cgroups, a.real, a.runs))
    print('%-4s %8s  %-34s %10s %8s' % ('tree', 'files', 'contender', 'median s', 'ratio'))
    for sc, r in results['scenarios'].items():
        print('%-4s %8d  %-34s %10.3f %8s' % (sc, r['files_read'], 'find -exec cat (peer)', r['find_exec_cat'],
                                              '1.00x'))
        print('%-4s %8s  %-34s %10.3f %7.2fx' % ('', '', 'cgroup_info logic (in-process)', r['cgroup_info_logic'],
                                                r['ratio_logic']))
        print('%-4s %8s  %-34s %10.3f %7.2fx' % ('', '', 'cgroup_info module (fresh python)',
                                                r['cgroup_info_module'], r['ratio_module']))
    ok = all(r['ratio_logic'] <= 2.0 for r in results['scenarios'].values())
    print('target (logic within 2x of find -exec cat): %s' % ('met' if ok else 'NOT met'))
    results['target_met'] = ok
    os.makedirs(os.path.join(HERE, 'results'), exist_ok=True)
    out = os.path.join(HERE, 'results', 'cgroup_audit.json')
    with open(out, 'w') as f:
        json.dump(results, f, indent=2, sort_keys=True)
    print('wrote', out)


if __name__ == '__main__':
    main()
