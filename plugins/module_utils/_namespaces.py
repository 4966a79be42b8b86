# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Linux namespace, mount and capability syscalls through ctypes, plus the pure tables
(namespace names, containerd's default capabilities, masked and read-only paths) that the
sandbox manager builds on.

Nothing here runs at import time; every syscall wrapper raises OSError with errno set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import signal

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError

# clone flags (linux/sched.h)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# Namespace names as the user writes them -> (clone flag, /proc/<pid>/ns/<file>).
NAMESPACES = {
    'pid': (CLONE_NEWPID, 'pid'),
    'net': (CLONE_NEWNET, 'net'),
    'mnt': (CLONE_NEWNS, 'mnt'),
    'uts': (CLONE_NEWUTS, 'uts'),
    'ipc': (CLONE_NEWIPC, 'ipc'),
}
# Accepted spellings (OCI / Kubernetes style) for the same namespaces.
NAMESPACE_ALIASES = {'network': 'net', 'mount': 'mnt'}
SANDBOX_NAMESPACES = ('pid', 'net', 'mnt', 'uts', 'ipc')
# Namespaces a container joins from its sandbox (CRI: NamespaceMode POD for net/ipc/uts).
JOINED_NAMESPACES = ('net', 'ipc', 'uts')

# mount flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2

# prctl
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

CLOSE_RANGE_CLOEXEC = 1 << 2

# x86_64 / aarch64 syscall numbers for calls glibc may not wrap.
_SYSCALLS = {
    'x86_64': {'pivot_root': 155, 'close_range': 436, 'capget': 125, 'capset': 126, 'setns': 308},
    'aarch64': {'pivot_root': 41, 'close_range': 436, 'capget': 90, 'capset': 91, 'setns': 268},
}

# Capabilities by number (linux/capability.h).
CAPABILITIES = [
    'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_DAC_READ_SEARCH', 'CAP_FOWNER', 'CAP_FSETID',
    'CAP_KILL', 'CAP_SETGID', 'CAP_SETUID', 'CAP_SETPCAP', 'CAP_LINUX_IMMUTABLE',
    'CAP_NET_BIND_SERVICE', 'CAP_NET_BROADCAST', 'CAP_NET_ADMIN', 'CAP_NET_RAW',
    'CAP_IPC_LOCK', 'CAP_IPC_OWNER', 'CAP_SYS_MODULE', 'CAP_SYS_RAWIO', 'CAP_SYS_CHROOT',
    'CAP_SYS_PTRACE', 'CAP_SYS_PACCT', 'CAP_SYS_ADMIN', 'CAP_SYS_BOOT', 'CAP_SYS_NICE',
    'CAP_SYS_RESOURCE', 'CAP_SYS_TIME', 'CAP_SYS_TTY_CONFIG', 'CAP_MKNOD', 'CAP_LEASE',
    'CAP_AUDIT_WRITE', 'CAP_AUDIT_CONTROL', 'CAP_SETFCAP', 'CAP_MAC_OVERRIDE',
    'CAP_MAC_ADMIN', 'CAP_SYSLOG', 'CAP_WAKE_ALARM', 'CAP_BLOCK_SUSPEND', 'CAP_AUDIT_READ',
    'CAP_PERFMON', 'CAP_BPF', 'CAP_CHECKPOINT_RESTORE',
]
CAP_NUMBERS = dict((n, i) for i, n in enumerate(CAPABILITIES))

# containerd's default capability set (oci.defaultUnixCaps / populateDefaultUnixSpec),
# set in bounding, effective and permitted; inheritable and ambient are empty (containerd
# stopped filling inheritable after CVE-2022-24769).
DEFAULT_CAPABILITIES = (
    'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW',
    'CAP_SETGID', 'CAP_SETUID', 'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE',
    'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
)

# containerd's populateDefaultUnixSpec Linux.MaskedPaths and ReadonlyPaths.
DEFAULT_MASKED_PATHS = (
    '/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats',
    '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug', '/sys/firmware',
    '/sys/devices/virtual/powercap', '/proc/scsi',
)
DEFAULT_READONLY_PATHS = (
    '/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger',
)

# Device nodes of a minimal /dev (runc's AllowedDevices that get a node).
DEFAULT_DEVICES = (
    ('null', 1, 3, 0o666), ('zero', 1, 5, 0o666), ('full', 1, 7, 0o666),
    ('random', 1, 8, 0o666), ('urandom', 1, 9, 0o666), ('tty', 5, 0, 0o666),
)
DEFAULT_DEV_SYMLINKS = (
    ('fd', '/proc/self/fd'), ('stdin', '/proc/self/fd/0'), ('stdout', '/proc/self/fd/1'),
    ('stderr', '/proc/self/fd/2'), ('ptmx', 'pts/ptmx'), ('core', '/proc/kcore'),
)


# ---------------------------------------------------------------- pure helpers

def normalise_namespaces(field, value):
    """A list of namespace names -> sorted canonical names; unknown names are an error."""
    if value is None:
        return list(SANDBOX_NAMESPACES)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(',') if v.strip()]
    out = []
    for v in value:
        name = NAMESPACE_ALIASES.get(v, v)
        if name not in NAMESPACES:
            known = ', '.join(sorted(list(NAMESPACES) + list(NAMESPACE_ALIASES)))
            raise BarepodError('unknown namespace %r (known: %s)' % (v, known), field=field, value=v)
        if name not in out:
            out.append(name)
    return sorted(out, key=list(SANDBOX_NAMESPACES).index)


def clone_flags(names):
    flags = 0
    for n in names:
        flags |= NAMESPACES[n][0]
    return flags


def cap_mask(names):
    """Capability names -> 64-bit mask."""
    mask = 0
    for n in names:
        if n not in CAP_NUMBERS:
            raise BarepodError('unknown capability %r' % (n,), field='capabilities', value=n)
        mask |= 1 << CAP_NUMBERS[n]
    return mask


def cap_names(mask):
    return [n for i, n in enumerate(CAPABILITIES) if mask & (1 << i)]


def parse_status_caps(text):
    """/proc/<pid>/status text -> {'CapInh': int, 'CapPrm': ..., 'NoNewPrivs': int}."""
    out = {}
    for line in text.splitlines():
        key, dummy, val = line.partition(':')
        if key in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb'):
            out[key] = int(val.strip(), 16)
        elif key in ('NoNewPrivs', 'Seccomp'):
            out[key] = int(val.strip())
    return out


def ns_inode(pid, ns, proc='/proc'):
    """Inode number of /proc/<pid>/ns/<ns> (None when the process is gone)."""
    try:
        return os.stat(os.path.join(proc, str(pid), 'ns', NAMESPACES[ns][1])).st_ino
    except OSError:
        return None


def ns_inodes(pid, names=SANDBOX_NAMESPACES, proc='/proc'):
    return dict((n, ns_inode(pid, n, proc)) for n in names)


def parse_mountinfo(text):
    """mountinfo text -> list of (mount_id, parent_id, mount_point, optional_fields, fstype)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 7:
            continue
        sep = parts.index('-', 6)
        mp = parts[4].encode().decode('unicode_escape')
        out.append((int(parts[0]), int(parts[1]), mp, parts[6:sep], parts[sep + 1]))
    return out


def mount_points(mountinfo='/proc/self/mountinfo'):
    with open(mountinfo) as f:
        return [m[2] for m in parse_mountinfo(f.read())]


def is_mount_point(path, mountinfo='/proc/self/mountinfo'):
    return os.path.normpath(path) in mount_points(mountinfo)


# ---------------------------------------------------------------- syscalls

_libc = None


def libc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL('libc.so.6', use_errno=True)
        except OSError:  # not glibc: find_library runs ldconfig/cc, slow but rare
            _libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    return _libc


def _check(ret, what):
    if ret == -1:
        e = ctypes.get_errno()
        raise OSError(e, '%s: %s' % (what, os.strerror(e)))
    return ret


def _syscall_nr(name):
    table = _SYSCALLS.get(platform.machine())
    if table is None:
        raise OSError(errno.ENOSYS, 'unsupported architecture %s' % platform.machine())
    return table[name]


def _b(s):
    if s is None:
        return None
    return s.encode() if isinstance(s, str) else s


def unshare(flags):
    if hasattr(os, 'unshare'):
        os.unshare(flags)
        return
    _check(libc().unshare(ctypes.c_int(flags)), 'unshare')


def setns(fd, nstype=0):
    if hasattr(os, 'setns'):
        os.setns(fd, nstype)
        return
    _check(libc().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), 'setns')


# pidfd_open and pidfd_send_signal have the same number on every Linux architecture (the unified
# syscall table from 424 on); os.pidfd_open and signal.pidfd_send_signal exist from Python 3.9 only.
_NR_PIDFD_SEND_SIGNAL = 424
_NR_PIDFD_OPEN = 434


def pidfd_open(pid):
    """os.pidfd_open, with the raw syscall on Python 3.8."""
    if hasattr(os, 'pidfd_open'):
        return os.pidfd_open(pid)
    return _check(libc().syscall(ctypes.c_long(_NR_PIDFD_OPEN), ctypes.c_int(pid), ctypes.c_uint(0)), 'pidfd_open')


def pidfd_send_signal(fd, sig):
    """signal.pidfd_send_signal, with the raw syscall on Python 3.8 (ProcessLookupError once exited)."""
    if hasattr(signal, 'pidfd_send_signal'):
        signal.pidfd_send_signal(fd, sig)
        return
    _check(libc().syscall(ctypes.c_long(_NR_PIDFD_SEND_SIGNAL), ctypes.c_int(fd), ctypes.c_int(int(sig)),
                          ctypes.c_void_p(None), ctypes.c_uint(0)), 'pidfd_send_signal')


def mount(source, target, fstype, flags=0, data=None):
    ret = libc().mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, 'mount %s on %s: %s' % (source, target, os.strerror(e)), target)


def umount2(target, flags=0):
    if libc().umount2(_b(target), ctypes.c_int(flags)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, 'umount %s: %s' % (target, os.strerror(e)), target)


def pivot_root(new_root, put_old):
    ret = libc().syscall(ctypes.c_long(_syscall_nr('pivot_root')), _b(new_root), _b(put_old))
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, 'pivot_root %s: %s' % (new_root, os.strerror(e)))


def prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    ret = libc().prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                       ctypes.c_ulong(arg4), ctypes.c_ulong(arg5))
    if ret == -1:
        e = ctypes.get_errno()
        raise OSError(e, 'prctl(%d): %s' % (option, os.strerror(e)))
    return ret


def sethostname(name):
    b = _b(name)
    if libc().sethostname(b, ctypes.c_size_t(len(b))) != 0:
        e = ctypes.get_errno()
        raise OSError(e, 'sethostname: %s' % os.strerror(e))


def close_range_cloexec(first=3):
    """Mark every fd >= first close-on-exec (close_range CLOEXEC, kernel >= 5.11).

    Falls back to closing them outright, which is only safe right before exec."""
    try:
        ret = libc().syscall(ctypes.c_long(_syscall_nr('close_range')), ctypes.c_uint(first),
                             ctypes.c_uint(0xFFFFFFFF), ctypes.c_uint(CLOSE_RANGE_CLOEXEC))
        if ret == 0:
            return True
    except OSError:
        pass
    for fd in _open_fds():
        if fd >= first:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
    return False


def _open_fds():
    try:
        return [int(x) for x in os.listdir('/proc/self/fd')]
    except OSError:
        return list(range(0, 1024))


class _CapHeader(ctypes.Structure):
    _fields_ = [('version', ctypes.c_uint32), ('pid', ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [('effective', ctypes.c_uint32), ('permitted', ctypes.c_uint32),
                ('inheritable', ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset(effective, permitted, inheritable):
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    ret = libc().syscall(ctypes.c_long(_syscall_nr('capset')), ctypes.byref(hdr), data)
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, 'capset: %s' % os.strerror(e))


def last_cap(proc='/proc'):
    try:
        with open(os.path.join(proc, 'sys/kernel/cap_last_cap')) as f:
            return int(f.read())
    except (OSError, ValueError):
        return len(CAPABILITIES) - 1


def drop_bounding_set(keep_mask, last=None):
    """Drop every capability not in keep_mask from the bounding set (needs CAP_SETPCAP)."""
    if last is None:
        last = last_cap()
    for cap in range(last + 1):
        if not keep_mask & (1 << cap):
            try:
                prctl(PR_CAPBSET_DROP, cap)
            except OSError as e:
                if e.errno != errno.EINVAL:  # a cap this kernel does not know
                    raise
