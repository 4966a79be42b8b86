# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared helpers of the hostile-input and escape tests (issue 7, part 2).

- `requires_root`: tests under tests/reliability are not auto-skipped like tests/integration.
- `busybox_rootfs(path)`: a rootfs of the host's busybox-static with every applet linked.
- `run_module_with_fds(...)`: like conftest.run_module, but the module inherits extra open
  file descriptors (as a careless caller such as an old runc did with a cgroup directory fd):
  the raw material of the CVE-2024-21626 working-directory escape.
- `escape_helper(dir)`: a static C program (built with gcc when available) that tries the
  classic double-chroot escape from inside a container.
- `mountpoints()`: every mount point this mount namespace sees.
- `Pod(tmp)`, `wait_log`, `log_sections`: tests/conftest.py's SandboxPod (no grace period) and log readers.
"""
import os
import shutil
import subprocess
import sys

import pytest



def _top_conftest():
    """tests/conftest.py under its own name: `conftest` may mean tests/reliability/conftest.py."""
    import importlib.util
    mod = sys.modules.get('barepod_tests_conftest')
    if mod is None:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'conftest.py')
        spec = importlib.util.spec_from_file_location('barepod_tests_conftest', path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules['barepod_tests_conftest'] = mod
    return mod


_top = _top_conftest()
COLLECTIONS_ROOT, ModuleResult, run_module = _top.COLLECTIONS_ROOT, _top.ModuleResult, _top.run_module
busybox_rootfs, BUSYBOX = _top.busybox_rootfs, _top.BUSYBOX
wait_log, log_sections = _top.wait_log, _top.log_sections


requires_root = pytest.mark.skipif(os.geteuid() != 0, reason='needs root (escape tests run real containers)')
requires_busybox = pytest.mark.skipif(not os.path.exists(BUSYBOX), reason='needs busybox-static')


def run_module_with_fds(name, args, pass_fds=(), check=False, timeout=60):
    """conftest.run_module, except that the module process inherits `pass_fds`."""
    return run_module(name, args, check=check, timeout=timeout, pass_fds=pass_fds)


ESCAPE_C = r'''
/* The classic chroot escape: chroot into a subdirectory while keeping a cwd above it,
 * walk up with chdir("..") far more often than the tree is deep, then chroot("."). In a
 * plain chroot this reaches the host's root; after pivot_root in a private mount
 * namespace it must stop at the container's own root. Prints what "/" holds afterwards and
 * whether argv[1] (an absolute host path) is visible. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

int main(int argc, char **argv) {
    struct stat st;
    int i;
    mkdir("/escape-x", 0755);
    if (chdir("/") != 0) { perror("chdir /"); return 2; }
    if (chroot("/escape-x") != 0) { printf("chroot-denied %s\n", strerror(errno)); }
    for (i = 0; i < 256; i++) chdir("..");
    if (chroot(".") != 0) { printf("chroot2-denied %s\n", strerror(errno)); }
    chdir("/");
    DIR *d = opendir("/");
    struct dirent *e;
    printf("ROOT:");
    while (d && (e = readdir(d))) if (e->d_name[0] != '.') printf(" %s", e->d_name);
    printf("\n");
    if (argc > 1) printf("MARKER %s\n", stat(argv[1], &st) == 0 ? "VISIBLE" : "absent");
    printf("DONE\n");
    return 0;
}
'''


def escape_helper(workdir):
    """Path of the static escape program, or None when no static C toolchain is present."""
    gcc = shutil.which('gcc')
    if not gcc:
        return None
    src = os.path.join(workdir, 'escape.c')
    out = os.path.join(workdir, 'escape')
    with open(src, 'w') as f:
        f.write(ESCAPE_C)
    p = subprocess.run([gcc, '-static', '-O1', '-o', out, src], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, check=False)
    return out if p.returncode == 0 else None


def mountpoints(mountinfo='/proc/self/mountinfo'):
    from ansible_collections.barepod.linux.plugins.module_utils._rootfs import parse_mountinfo
    with open(mountinfo) as f:
        return [m['mountpoint'] for m in parse_mountinfo(f.read())]


class Pod(_top.SandboxPod):
    """tests/conftest.py's SandboxPod, stopped without a grace period, with more time per module run."""

    def __init__(self, tmp):
        super(Pod, self).__init__(tmp, grace_period=0, timeout=60)


def proc_status(pid):
    with open('/proc/%d/status' % pid) as f:
        return dict(line.split(':', 1) for line in f.read().splitlines() if ':' in line)
