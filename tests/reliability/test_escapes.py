# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Escapes attempted from inside a real container (ns_sandbox + a busybox rootfs), as root.

Each test runs the module as Ansible does, in throwaway state/netns/log directories, and
records one 'escape' line of evidence per attempt. tests/integration/test_ns_sandbox.py
already checks the default capability set, NoNewPrivs and the fds from inside a well-behaved
pod and a single-level chroot; these tests add the attacks themselves: the double-chroot
escape, writes to host kernel knobs, cgroup v1 release_agent (also through a user
namespace), a caller that leaks fds into the runtime, and working directories through
/proc/self/fd (CVE-2024-21626).
"""
import os
import shutil
import tempfile

import pytest

from _hostile import Pod, escape_helper, proc_status, requires_busybox, requires_root, wait_log
from _hostile import log_sections as sections

from ansible_collections.barepod.linux.plugins.module_utils import _namespaces as ns

pytestmark = [pytest.mark.reliability, requires_root, requires_busybox]

DEFAULT_CAPEFF = ns.cap_mask(ns.DEFAULT_CAPABILITIES)


@pytest.fixture
def pod():
    with Pod(tempfile.mkdtemp(prefix='bpesc-')) as p:
        yield p


def start(pod, script, pass_fds=(), **extra):
    rootfs = pod.rootfs()
    c = dict(name='box', rootfs=rootfs, command=['sh', '-c', script])
    c.update(extra)
    r = pod.run(containers=[c], pass_fds=pass_fds)
    assert not r.failed, r
    return r, rootfs


def test_double_chroot_escape_stays_in_the_rootfs(pod, reliability_log):
    helper = escape_helper(pod.tmp)
    if helper is None:
        pytest.skip('no static C toolchain (gcc, libc6-dev) to build the escape program')
    marker = os.path.join(pod.tmp, 'HOSTMARKER')
    with open(marker, 'w') as f:
        f.write('host\n')
    rootfs = pod.rootfs()
    shutil.copy(helper, os.path.join(rootfs, 'escape'))
    # the helper in C (mkdir x; chroot x; chdir("..") x256; chroot(".")), then the same with
    # the shell: cd far above the root and look for the host marker
    script = ('/escape %s; echo -""--; cd /; for i in $(seq 64); do cd ..; done; pwd; ls; '
              'ls %s 2>&1; echo END' % (marker, marker))
    r = pod.run(containers=[dict(name='esc', rootfs=rootfs, command=['sh', '-c', script])])
    assert not r.failed, r
    out = wait_log(r['containers'][0]['log_path'], 'END')
    c_part, sh_part = sections(out)[:2]
    ok = 'MARKER absent' in c_part and 'chroot-denied' not in c_part
    listing = [ln for ln in c_part.splitlines() if ln.startswith('ROOT:')][0].split()[1:]
    ok = ok and sorted(listing) == sorted(os.listdir(rootfs))
    ok = ok and 'No such file' in sh_part and sh_part.splitlines()[0] == '/'
    reliability_log('escape', 'double chroot (mkdir x; chroot x; cd .. x256; chroot .)',
                    'blocked' if ok else 'FAILED')
    assert 'MARKER absent' in c_part, out
    assert sorted(listing) == sorted(os.listdir(rootfs)), out  # "/" is still the container's root
    assert sh_part.splitlines()[0] == '/' and 'No such file' in sh_part, out


def test_host_kernel_knobs_cannot_be_written(pod, reliability_log):
    with open('/proc/sys/kernel/core_pattern') as f:
        core_before = f.read()
    # writing core_pattern's own value back (harmless even if it got through); sysrq 'h' only
    # prints help to the kernel log
    script = ('(printf h > /proc/sysrq-trigger) 2>/dev/null && echo SYSRQ-WROTE || echo SYSRQ-DENIED; '
              'cat /proc/sys/kernel/core_pattern > /tmp/cp 2>/dev/null; '
              '(cat /tmp/cp > /proc/sys/kernel/core_pattern) 2>/dev/null && echo CORE-WROTE || echo CORE-DENIED; '
              '(echo "|/tmp/evil %p" > /proc/sys/kernel/core_pattern) 2>/dev/null && echo CORE2-WROTE || echo CORE2-DENIED; '
              '(echo 1 > /proc/sys/kernel/modprobe) 2>/dev/null && echo MODPROBE-WROTE || echo MODPROBE-DENIED; '
              'echo END')
    r, _ = start(pod, script)
    out = wait_log(r['containers'][0]['log_path'], 'END')
    with open('/proc/sys/kernel/core_pattern') as f:
        core_after = f.read()
    for knob in ('SYSRQ', 'CORE', 'CORE2', 'MODPROBE'):
        reliability_log('escape', 'write %s from a container' % {'SYSRQ': '/proc/sysrq-trigger',
                                                                 'CORE': '/proc/sys/kernel/core_pattern (same value)',
                                                                 'CORE2': '/proc/sys/kernel/core_pattern (pipe handler)',
                                                                 'MODPROBE': '/proc/sys/kernel/modprobe'}[knob],
                        'blocked' if '%s-DENIED' % knob in out else 'FAILED')
    assert core_after == core_before
    for knob in ('SYSRQ', 'CORE', 'CORE2', 'MODPROBE'):
        assert '%s-DENIED' % knob in out, out


def _release_agent(controller='memory'):
    p = '/sys/fs/cgroup/%s/release_agent' % controller
    try:
        with open(p) as f:
            return f.read()
    except OSError:
        return None


def test_cgroup_v1_release_agent_unreachable(pod, reliability_log):
    agent_before = _release_agent()
    script = ('mkdir -p /mnt/cg; (mount -t cgroup -o memory cgroup /mnt/cg) 2>/dev/null && echo MOUNTED || echo MOUNT-DENIED; '
              'if [ -e /mnt/cg/cgroup.procs ]; then (echo /evil > /mnt/cg/release_agent) 2>/dev/null && echo AGENT-WROTE '
              '|| echo AGENT-DENIED; else echo NO-CGROUPFS; fi; '
              'echo -""--; '
              # CVE-2022-0492: a new user (and cgroup, mount) namespace gives back CAP_SYS_ADMIN there
              'unshare -U -r -m -C sh -c "mkdir -p /mnt/cg2; '
              '(mount -t cgroup -o memory cgroup /mnt/cg2) 2>/dev/null && echo MOUNTED || echo MOUNT-DENIED; '
              'if [ -e /mnt/cg2/cgroup.procs ]; then (echo /evil > /mnt/cg2/release_agent) 2>/dev/null && echo AGENT-WROTE '
              '|| echo AGENT-DENIED; else echo NO-CGROUPFS; fi" '
              '2>/dev/null || echo USERNS-DENIED; echo END')
    r, _ = start(pod, script)
    out = wait_log(r['containers'][0]['log_path'], 'END')
    plain, userns = sections(out)[:2]
    reliability_log('escape', 'mount cgroup v1 (memory) in a container', 'blocked' if 'MOUNT-DENIED' in plain else 'FAILED')
    reliability_log('escape', 'write release_agent (through a user namespace too)',
                    'blocked' if 'AGENT-WROTE' not in out and _release_agent() == agent_before else 'FAILED')
    assert 'MOUNT-DENIED' in plain, out
    assert 'AGENT-WROTE' not in out, out
    assert _release_agent() == agent_before


def test_capabilities_and_no_new_privs_seen_from_the_host(pod, reliability_log):
    rootfs = pod.rootfs()
    r = pod.run(containers=[dict(name='root', rootfs=rootfs, command=['sleep', '1000']),
                            dict(name='user', rootfs=rootfs, command=['sleep', '1000'],
                                 security_context=dict(run_as_user=1000, run_as_group=1000))])
    assert not r.failed, r
    by = dict((c['name'], proc_status(c['pid'])) for c in r['containers'])
    ok_root = (int(by['root']['CapEff'], 16) == DEFAULT_CAPEFF and int(by['root']['CapBnd'], 16) == DEFAULT_CAPEFF
               and by['root']['NoNewPrivs'].strip() == '1')
    ok_user = (int(by['user']['CapEff'], 16) == 0 and int(by['user']['CapPrm'], 16) == 0
               and int(by['user']['CapBnd'], 16) == DEFAULT_CAPEFF and by['user']['NoNewPrivs'].strip() == '1')
    reliability_log('escape', 'capabilities beyond the documented default (root container)', 'blocked' if ok_root else 'FAILED')
    reliability_log('escape', 'capabilities for a runAsUser container', 'blocked' if ok_user else 'FAILED')
    assert int(by['root']['CapEff'], 16) == DEFAULT_CAPEFF
    assert int(by['root']['CapBnd'], 16) == DEFAULT_CAPEFF
    assert int(by['root']['CapInh'], 16) == 0 and int(by['root'].get('CapAmb', '0'), 16) == 0
    assert by['root']['NoNewPrivs'].strip() == '1'
    assert int(by['user']['CapEff'], 16) == 0 and int(by['user']['CapPrm'], 16) == 0
    assert by['user']['NoNewPrivs'].strip() == '1'
    assert by['user']['Uid'].split()[:2] == ['1000', '1000']


def _leaky_fds(hostdir, n=4):
    """Directory fds onto a host directory, inheritable: a careless caller's leaked fds."""
    fds = []
    for _ in range(n):
        fd = os.open(hostdir, os.O_RDONLY | os.O_DIRECTORY)
        os.set_inheritable(fd, True)
        fds.append(fd)
    return fds


def test_leaked_caller_fds_never_reach_the_container(pod, reliability_log):
    hostdir = os.path.join(pod.tmp, 'hostdir')
    os.makedirs(hostdir)
    fds = _leaky_fds(hostdir)
    try:
        r, rootfs = start(pod, 'ls /proc/self/fd; echo END; sleep 1000', pass_fds=fds)
        out = wait_log(r['containers'][0]['log_path'], 'END')
    finally:
        for fd in fds:
            os.close(fd)
    cpid = r['containers'][0]['pid']
    c_fds = sorted(os.listdir('/proc/%d/fd' % cpid))
    p_fds = sorted(os.listdir('/proc/%d/fd' % r['pid']))
    targets = [os.readlink('/proc/%d/fd/%s' % (cpid, fd)) for fd in c_fds]
    ok = c_fds == ['0', '1', '2'] and p_fds == ['0', '1', '2'] and not any(hostdir in t for t in targets)
    reliability_log('escape', 'fds leaked by the caller inherited by container/pause', 'blocked' if ok else 'FAILED')
    assert c_fds == ['0', '1', '2'], targets
    assert p_fds == ['0', '1', '2']
    assert not any(hostdir in t for t in targets), targets
    # `ls` itself opens the directory as fd 3; nothing else
    assert out.split()[:3] == ['0', '1', '2'] and len(out.split()) <= 5, out


@pytest.mark.parametrize('how', ['proc-self-fd', 'symlink-to-proc-self-fd', 'proc-dotdot'])
def test_working_dir_through_proc_self_fd_is_refused(pod, reliability_log, how):
    """CVE-2024-21626: the runtime holds a host directory open; a workingDir of
    /proc/self/fd/N (directly, or through a symlink in the image) would leave the container's
    cwd on the host. The module must refuse, or the cwd must resolve inside the rootfs."""
    hostdir = os.path.join(pod.tmp, 'hostdir')
    os.makedirs(hostdir)
    with open(os.path.join(hostdir, 'HOSTFILE'), 'w') as f:
        f.write('x')
    fds = _leaky_fds(hostdir)
    rootfs = pod.rootfs()
    containers = []
    for fd in list(range(3, 9)):
        if how == 'proc-self-fd':
            wd = '/proc/self/fd/%d' % fd
        elif how == 'proc-dotdot':
            wd = '/tmp/../proc/self/fd/%d' % fd
        else:
            os.symlink('/proc/self/fd/%d' % fd, os.path.join(rootfs, 'w%d' % fd))
            wd = '/w%d' % fd
        containers.append(dict(name='wd%d' % fd, rootfs=rootfs, working_dir=wd,
                               command=['sh', '-c', 'ls; sleep 1000']))
    escaped = []
    results = []
    try:
        for c in containers:
            r = pod.run(containers=[c], prune_containers=False, pass_fds=fds)
            results.append(r)
            for cc in r.get('containers') or []:
                if cc.get('pid'):
                    cwd = os.readlink('/proc/%d/cwd' % cc['pid'])
                    if not (cwd == rootfs or cwd.startswith(rootfs + '/')):
                        escaped.append((c['working_dir'], cwd))
    finally:
        for fd in fds:
            os.close(fd)
    refused = [r for r in results if r.failed]
    for r in refused:
        assert 'working_dir' in r['msg'] and 'Traceback' not in r['_stderr'], r
    reliability_log('escape', 'workingDir %s (CVE-2024-21626), 6 fds' % how, 'FAILED' if escaped else 'blocked',
                    refused=len(refused))
    assert not escaped, escaped
