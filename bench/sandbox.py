#!/usr/bin/env python3
"""Benchmark: bring up a pod sandbox + one busybox container, against real peers.

One command (as root):  .venv/bin/python bench/sandbox.py [--runs N] [--no-ansible]

Each contender starts `/bin/sh -c true` from the same busybox rootfs in new pid, net,
mount, uts and ipc namespaces and waits for it to finish; then tears down:

  barepod (manager)   the ns_sandbox logic in-process: pause + container up, wait for exit, absent
  barepod (module)    the same through the module in a fresh interpreter, as Ansible runs it
  ansible-playbook    the same through ansible-playbook (localhost, connection local)
  runc run            Debian's runc with a `runc spec` config (terminal off) on the same rootfs
  unshare+chroot      the chapter's line: unshare -p -n -f --mount-proc=.. chroot rootfs /bin/sh -c true

Prints a table of medians and ratios against runc, plus the pause process RSS for both
implementations (compiled C and the busybox fallback), and writes JSON to bench/results/.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests'))

from conftest import COLLECTIONS_ROOT, run_module  # noqa: E402

from ansible_collections.barepod.linux.plugins.module_utils._common import pid_alive  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils._sandbox import SandboxManager, rss_kib  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils._state import list_records  # noqa: E402

BUSYBOX = '/bin/busybox'


def make_rootfs(path):
    os.makedirs(os.path.join(path, 'bin'))
    shutil.copy(BUSYBOX, os.path.join(path, 'bin', 'busybox'))
    for a in subprocess.check_output([BUSYBOX, '--list']).decode().split():
        if a != 'busybox':
            os.symlink('busybox', os.path.join(path, 'bin', a))
    for d in ('proc', 'dev', 'sys', 'tmp', 'etc'):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    return path


def private_kib(pid):
    """Private (unshared) resident memory: what the pause process really costs the node."""
    total = 0
    with open('/proc/%d/smaps_rollup' % pid) as f:
        for line in f:
            if line.startswith(('Private_Clean:', 'Private_Dirty:')):
                total += int(line.split()[1])
    return total


def wait_gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.001)


class Bench(object):
    def __init__(self, tmp):
        self.tmp = tmp
        self.rootfs = make_rootfs(os.path.join(tmp, 'bundle', 'rootfs'))
        self.dirs = dict(state_root=os.path.join(tmp, 'state'), netns_dir=os.path.join(tmp, 'netns'),
                         log_root=os.path.join(tmp, 'logs'), pause_dir=os.path.join(tmp, 'pause'))
        self.cgparent = 'barepod-bench-%s' % uuid.uuid4().hex[:8]

    def args(self, name, **kw):
        a = dict(self.dirs, name=name, grace_period=1,
                 containers=[dict(name='c', rootfs=self.rootfs, command=['sh', '-c', 'true'])])
        a.update(kw)
        return a

    def barepod_manager(self, i):
        a = self.args('bench-m%d' % i)
        r = SandboxManager(a).run()
        wait_gone(r['containers'][0]['pid'])
        SandboxManager(dict(a, state='absent')).run()

    def barepod_module(self, i):
        a = self.args('bench-p%d' % i)
        r = run_module('ns_sandbox', a)
        assert not r.get('failed'), r
        wait_gone(r['containers'][0]['pid'])
        r = run_module('ns_sandbox', dict(a, state='absent'))
        assert not r.get('failed'), r

    def ansible_playbook(self, i):
        a = self.args('bench-a%d' % i)
        pb = os.path.join(self.tmp, 'pb.yml')
        task = dict(name='pod', **{'barepod.linux.ns_sandbox': a})
        down = dict(name='down', **{'barepod.linux.ns_sandbox': dict(a, state='absent')})
        with open(pb, 'w') as f:
            json.dump([dict(hosts='localhost', connection='local', gather_facts=False,
                            vars=dict(ansible_python_interpreter=sys.executable),
                            tasks=[task, down])], f)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_ROOT,
                   ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_LOCALHOST_WARNING='false',
                   ANSIBLE_INVENTORY_UNPARSED_WARNING='false')
        p = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,', pb],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, check=False)
        if p.returncode != 0:
            raise RuntimeError(p.stdout.decode()[-2000:])

    def runc_setup(self):
        bundle = os.path.join(self.tmp, 'bundle')
        subprocess.run(['runc', 'spec'], cwd=bundle, check=True)
        with open(os.path.join(bundle, 'config.json')) as f:
            cfg = json.load(f)
        cfg['process']['terminal'] = False
        cfg['process']['args'] = ['/bin/sh', '-c', 'true']
        cfg['root']['readonly'] = False
        cfg['linux']['cgroupsPath'] = '/%s/ctr' % self.cgparent
        with open(os.path.join(bundle, 'config.json'), 'w') as f:
            json.dump(cfg, f)
        self.bundle = bundle
        self.runc_root = os.path.join(self.tmp, 'runc-state')

    def runc(self, i):
        cid = 'bench-%s-%d' % (self.cgparent, i)
        subprocess.run(['runc', '--root', self.runc_root, 'run', '-b', self.bundle, cid],
                       stdin=subprocess.DEVNULL, check=True)
        subprocess.run(['runc', '--root', self.runc_root, 'delete', '-f', cid],
                       stderr=subprocess.DEVNULL, check=False)

    def unshare_chroot(self, i):
        subprocess.run(['unshare', '-p', '-n', '-u', '-i', '-f', '--mount-proc=%s/proc' % self.rootfs,
                        'chroot', self.rootfs, '/bin/sh', '-c', 'true'], stdin=subprocess.DEVNULL, check=True)

    def pause_rss(self, impl):
        a = self.args('bench-rss-%s' % impl, pause=impl, containers=[])
        r = SandboxManager(a).run()
        try:
            time.sleep(0.2)
            return rss_kib(r['pid']), private_kib(r['pid']), r['sandbox']['pause']
        finally:
            SandboxManager(dict(a, state='absent')).run()

    def cleanup(self):
        for rec in list_records(self.dirs['state_root']):  # pods a failed run left behind
            SandboxManager(dict(self.dirs, name=rec['name'], namespace=rec['namespace'], state='absent',
                                grace_period=0)).run()
        for hier in os.listdir('/sys/fs/cgroup'):
            base = os.path.join('/sys/fs/cgroup', hier, self.cgparent)
            if os.path.isdir(base):
                for leaf in sorted(os.listdir(base)):
                    p = os.path.join(base, leaf)
                    if os.path.isdir(p):
                        try:
                            os.rmdir(p)
                        except OSError:
                            pass
                try:
                    os.rmdir(base)
                except OSError:
                    pass
        subprocess.run(['umount', '-l', self.dirs['netns_dir']], stderr=subprocess.DEVNULL, check=False)


def timeit(fn, runs):
    times = []
    for i in range(runs):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    ap.add_argument('--runs', type=int, default=20)
    ap.add_argument('--no-ansible', action='store_true', help='skip the ansible-playbook contender')
    opts = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit('bench/sandbox.py needs root')
    tmp = tempfile.mkdtemp(prefix='barepod-bench-')
    b = Bench(tmp)
    results = {}
    try:
        b.runc_setup()
        b.barepod_manager(999)  # warm up: compiles the pause binary once
        contenders = [('barepod (manager)', b.barepod_manager, opts.runs),
                      ('barepod (module)', b.barepod_module, opts.runs)]
        if not opts.no_ansible:
            contenders.append(('ansible-playbook', b.ansible_playbook, max(3, min(opts.runs, 5))))
        contenders += [('runc run', b.runc, opts.runs), ('unshare+chroot', b.unshare_chroot, opts.runs)]
        for name, fn, runs in contenders:
            results[name] = timeit(fn, runs)
        rss = dict((impl, b.pause_rss(impl)) for impl in ('c', 'busybox'))
    finally:
        b.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    ref = statistics.median(results['runc run'])
    print('pod sandbox + one busybox container running `sh -c true`, up and down; %d runs' % opts.runs)
    print('%-20s %6s %12s %12s %10s' % ('contender', 'runs', 'median ms', 'min ms', 'vs runc'))
    rows = []
    for name, times in results.items():
        med = statistics.median(times)
        rows.append(dict(name=name, runs=len(times), median_s=med, min_s=min(times), ratio_vs_runc=med / ref))
        print('%-20s %6d %12.1f %12.1f %9.2fx' % (name, len(times), med * 1000, min(times) * 1000, med / ref))
    print()
    print('pause process memory:   VmRSS   private (Private_Clean + Private_Dirty)')
    for impl, (kib, priv, used) in rss.items():
        print('  %-8s %10s KiB %6s KiB%s' % (impl, kib, priv, '' if used == impl else '  (fell back to %s)' % used))
    out = dict(kind='sandbox', time=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), runs=opts.runs,
               rows=rows, pause_rss_kib=dict((k, v[0]) for k, v in rss.items()),
               pause_private_kib=dict((k, v[1]) for k, v in rss.items()), raw=results)
    os.makedirs(os.path.join(HERE, 'results'), exist_ok=True)
    path = os.path.join(HERE, 'results', 'sandbox-%s.json' % time.strftime('%Y%m%d-%H%M%S'))
    with open(path, 'w') as f:
        json.dump(out, f, indent=2)
    print('\nwrote %s' % path)


if __name__ == '__main__':
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
