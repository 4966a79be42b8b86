# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pod sandbox's holder process (the "pause container").

A few lines of C, like Kubernetes' build/pause/linux/pause.c: as PID 1 of the pod's pid
namespace it reaps every zombie reparented to it and exits on SIGTERM/SIGINT. It is
compiled statically with the system C compiler into a cache directory on first use (the
binary name carries the hash of the source, so a changed source is rebuilt) and checked
by starting it and stopping it with SIGTERM.

On x86_64 and aarch64 the program is freestanding (raw system calls, no libc): a 5 KiB
binary with about 8 KiB resident. Elsewhere, or if that build fails, the same program
linked statically against glibc is used (about 700 KiB resident, mostly its text).

Fallback when no compiler is available: Debian's statically linked busybox running a
shell loop that traps TERM/INT and waits (reaping children); bigger (about 1 MiB RSS) but
needs nothing but busybox-static.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time

from ansible_collections.barepod.linux.plugins.module_utils import _defaults
from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError

DEFAULT_PAUSE_DIR = _defaults.PAUSE_DIR

PAUSE_FREESTANDING_C = r'''
/* barepod pause, freestanding: no libc, a few KiB resident. */
#define SIGINT 2
#define SIGTERM 15
#define SIGCHLD 17
#define SA_NOCLDSTOP 1
#define SA_RESTORER 0x04000000
#define WNOHANG 1

#if defined(__x86_64__)
#define NR_RT_SIGACTION 13
#define NR_RT_SIGRETURN 15
#define NR_WAIT4 61
#define NR_EXIT_GROUP 231
#define NR_PPOLL 271
static long sc(long n, long a, long b, long c, long d)
{
    long r;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
    return r;
}
void barepod_restore(void);
__asm__(".text\n.globl barepod_restore\nbarepod_restore:\n\tmov $15, %rax\n\tsyscall\n\thlt\n");
#define RESTORER ((unsigned long)barepod_restore)
#define RESTORER_FLAG SA_RESTORER
#elif defined(__aarch64__)
#define NR_RT_SIGACTION 134
#define NR_WAIT4 260
#define NR_EXIT_GROUP 94
#define NR_PPOLL 73
static long sc(long n, long a, long b, long c, long d)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
    return x0;
}
#define RESTORER 0UL
#define RESTORER_FLAG 0
#else
#error "freestanding pause: unsupported architecture"
#endif

struct ksigaction {
    void (*handler)(int);
    unsigned long flags;
    unsigned long restorer;
    unsigned long mask;
};

static void sigdown(int signo)
{
    (void)signo;
    sc(NR_EXIT_GROUP, 0, 0, 0, 0);
}

static void sigreap(int signo)
{
    (void)signo;
    while (sc(NR_WAIT4, -1, 0, WNOHANG, 0) > 0)
        ;
}

static void on(int signo, void (*fn)(int), unsigned long flags)
{
    struct ksigaction sa = { fn, flags | RESTORER_FLAG, RESTORER, 0 };
    if (sc(NR_RT_SIGACTION, signo, (long)&sa, 0, sizeof(sa.mask)) < 0)
        sc(NR_EXIT_GROUP, 1, 0, 0, 0);
}

#if defined(__x86_64__)
__attribute__((force_align_arg_pointer))
#endif
void _start(void)
{
    on(SIGINT, sigdown, 0);
    on(SIGTERM, sigdown, 0);
    on(SIGCHLD, sigreap, SA_NOCLDSTOP);
    for (;;)
        sc(NR_PPOLL, 0, 0, 0, 0);  /* sleeps until a signal, like pause() */
}
'''

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


FREESTANDING_FLAGS = ['-nostdlib', '-ffreestanding', '-fno-stack-protector', '-fno-asynchronous-unwind-tables']


def source_hash():
    return hashlib.sha256((PAUSE_FREESTANDING_C + PAUSE_C).encode()).hexdigest()[:12]


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
        errors = []
        for name, source, flags in (('freestanding', PAUSE_FREESTANDING_C, FREESTANDING_FLAGS),
                                    ('libc', PAUSE_C, [])):
            src = os.path.join(tmpdir, 'pause-%s.c' % name)
            with open(src, 'w') as f:
                f.write(source)
            out = os.path.join(tmpdir, 'pause-%s' % name)
            p = subprocess.run([cc, '-static', '-Os', '-s'] + flags + ['-o', out, src],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               check=False)
            if p.returncode != 0:
                errors.append('%s: %s' % (name, p.stdout.decode(errors='replace').strip()[-600:]))
                continue
            problem = check_binary(out)
            if problem:
                errors.append('%s: %s' % (name, problem))
                continue
            break
        else:
            raise BarepodError('building the pause process failed: %s' % '; '.join(errors),
                               field='pause', value='c')
        os.chmod(out, 0o755)
        os.rename(out, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    for old in os.listdir(pause_dir):  # binaries of older sources (running ones keep their inode)
        if old.startswith('pause-') and old != os.path.basename(target):
            try:
                os.unlink(os.path.join(pause_dir, old))
            except OSError:
                pass
    return target


def check_binary(path, timeout=5.0):
    """Start the binary, stop it with SIGTERM: None when it behaved (exit status 0)."""
    try:
        p = subprocess.Popen([path], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, close_fds=True)
    except OSError as e:
        return 'cannot run: %s' % e
    try:
        time.sleep(0.02)
        if p.poll() is not None:
            return 'exited at once with status %s' % p.returncode
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout)
        return None if rc == 0 else 'exit status %s on SIGTERM' % rc
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return 'did not exit on SIGTERM'


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
