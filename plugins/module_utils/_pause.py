# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pod sandbox's holder process (the "pause container").

A few lines of C, like Kubernetes' build/pause/linux/pause.c: as PID 1 of the pod's pid
namespace it reaps every zombie reparented to it and exits on SIGTERM/SIGINT. It is
compiled statically with the system C compiler into a cache directory on first use (the
binary name carries the hash of the source, so a changed source is rebuilt). Its resident
set is a few hundred KiB.

Fallback when no compiler is available: Debian's statically linked busybox running a
shell loop that traps TERM/INT and waits (reaping children); bigger (about 1 MiB RSS) but
needs nothing but busybox-static.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError

DEFAULT_PAUSE_DIR = '/var/lib/barepod/pause'

PAUSE_C = r'''
/* barepod pause: hold a pod's namespaces, reap zombies as PID 1, exit on TERM/INT. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void sigdown(int signo)
{
    (void)signo;
    _exit(0);
}

static void sigreap(int signo)
{
    (void)signo;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

int main(int argc, char **argv)
{
    struct sigaction sa;

    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("barepod-pause 1");
        return 0;
    }
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = sigdown;
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
        return 1;
    sa.sa_handler = sigreap;
    sa.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGCHLD, &sa, NULL) < 0)
        return 2;
    for (;;)
        pause();
    return 42;
}
'''

BUSYBOX_PAUSE_SCRIPT = ('trap "exit 0" TERM INT; '
                        'while :; do sleep 2147483647 & wait $!; done')


def source_hash():
    return hashlib.sha256(PAUSE_C.encode()).hexdigest()[:12]


def compiled_path(pause_dir=DEFAULT_PAUSE_DIR):
    return os.path.join(pause_dir, 'pause-%s' % source_hash())


def find_compiler():
    for cc in ('cc', 'gcc', 'clang'):
        p = shutil.which(cc)
        if p:
            return p
    return None


def find_busybox():
    for p in ('/bin/busybox', '/usr/bin/busybox'):
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return shutil.which('busybox')


def compile_pause(pause_dir=DEFAULT_PAUSE_DIR, cc=None):
    """Build the static pause binary (once); returns its path. Raises OSError/BarepodError."""
    target = compiled_path(pause_dir)
    if os.path.isfile(target) and os.access(target, os.X_OK):
        return target
    cc = cc or find_compiler()
    if not cc:
        raise BarepodError('no C compiler (cc) found to build the pause process',
                           field='pause', value='c')
    os.makedirs(pause_dir, 0o755, exist_ok=True)
    tmpdir = tempfile.mkdtemp(prefix='.build-', dir=pause_dir)
    try:
        src = os.path.join(tmpdir, 'pause.c')
        with open(src, 'w') as f:
            f.write(PAUSE_C)
        out = os.path.join(tmpdir, 'pause')
        p = subprocess.run([cc, '-static', '-Os', '-s', '-o', out, src],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           check=False)
        if p.returncode != 0:
            raise BarepodError('compiling the pause process failed: %s'
                               % p.stdout.decode(errors='replace').strip()[-800:],
                               field='pause', value='c')
        os.chmod(out, 0o755)
        os.rename(out, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return target


def pause_argv(impl='auto', pause_dir=DEFAULT_PAUSE_DIR):
    """(implementation, argv) of the holder process for impl in auto|c|busybox."""
    if impl not in ('auto', 'c', 'busybox'):
        raise BarepodError('must be one of auto, c, busybox; got %r' % (impl,), field='pause', value=impl)
    if impl in ('auto', 'c'):
        try:
            return 'c', [compile_pause(pause_dir)]
        except (BarepodError, OSError) as e:
            if impl == 'c':
                if isinstance(e, BarepodError):
                    raise
                raise BarepodError('cannot build the pause process in %s: %s' % (pause_dir, e),
                                   field='pause_dir', value=pause_dir)
    bb = find_busybox()
    if not bb:
        raise BarepodError('neither a C compiler nor busybox is available for the pause process',
                           field='pause', value=impl)
    return 'busybox', [bb, 'sh', '-c', BUSYBOX_PAUSE_SCRIPT]
