# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared building blocks of every barepod module.

Pure Python, importable without Ansible: the error type every manager raises, validators
for Kubernetes names, the action recorder that is the single check-mode choke point, and
file helpers that write only when the content differs (so a second run performs zero
writes).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import tempfile

# Kubernetes name rules (k8s.io/apimachinery/pkg/util/validation).
DNS1123_LABEL_RE = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z')
DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_RE = re.compile(
    r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z')
DNS1123_SUBDOMAIN_MAX = 253
IFNAMSIZ = 16  # includes the trailing NUL: interface names are at most 15 bytes


class BarepodError(Exception):
    """An error with a message fit for fail_json, naming the field and value when known."""

    def __init__(self, msg, field=None, value=None, **extra):
        self.field = field
        self.value = value
        self.extra = extra
        if field is not None and field not in msg:
            msg = '%s: %s' % (field, msg)
        super().__init__(msg)

    @property
    def msg(self):
        return str(self)


def _validate_dns_name(field, value, max_len, pattern, what):
    if not isinstance(value, str) or not value:
        raise BarepodError('must be a non-empty string, got %r' % (value,), field=field, value=value)
    if len(value) > max_len:
        raise BarepodError('%r is longer than %d characters' % (value, max_len), field=field, value=value)
    if not pattern.match(value):
        raise BarepodError('%r is not a valid %s' % (value, what), field=field, value=value)
    return value


def validate_dns_label(field, value):
    """A DNS-1123 label (container names, namespaces): lower case, digits, '-', <= 63."""
    return _validate_dns_name(field, value, DNS1123_LABEL_MAX, DNS1123_LABEL_RE, 'DNS-1123 label (lower case letters, '
                              'digits and "-", starting and ending with a letter or digit)')


def validate_dns_subdomain(field, value):
    """A DNS-1123 subdomain (pod names): like a label, dots allowed, <= 253."""
    return _validate_dns_name(field, value, DNS1123_SUBDOMAIN_MAX, DNS1123_SUBDOMAIN_RE,
                              'DNS-1123 subdomain (lower case letters, digits, "-" and ".")')


UID_RE = re.compile(r'^[0-9a-zA-Z][0-9a-zA-Z-]{0,62}\Z')


def validate_uid(field, value):
    """A pod uid as the API server hands them out (a UUID), or any safe token."""
    if not isinstance(value, str) or not UID_RE.match(value):
        raise BarepodError('%r is not a valid uid (letters, digits and "-", at most 63)'
                           % (value,), field=field, value=value)
    return value


def validate_ifname(field, value):
    if not isinstance(value, str) or not value:
        raise BarepodError('must be a non-empty interface name', field=field, value=value)
    if len(value.encode()) >= IFNAMSIZ:
        raise BarepodError('interface name %r is %d characters, the kernel allows at most %d'
                           % (value, len(value.encode()), IFNAMSIZ - 1), field=field, value=value)
    if '/' in value or any(c.isspace() for c in value) or value in ('.', '..') or ':' in value:
        raise BarepodError('interface name %r contains "/", ":" or whitespace' % (value,),
                           field=field, value=value)
    return value


class Actions(object):
    """The single choke point between a plan and the host.

    Managers build a list of actions (dicts with at least 'action' and 'target') with
    add(); run() executes each callable only outside check mode. `changed` is bool(plan).
    """

    def __init__(self, check_mode=False):
        self.check_mode = check_mode
        self.planned = []
        self._fns = []

    def add(self, action, target, fn=None, **details):
        entry = dict(action=action, target=target)
        entry.update(details)
        self.planned.append(entry)
        self._fns.append(fn)
        return entry

    def __bool__(self):
        return bool(self.planned)

    __nonzero__ = __bool__

    def __len__(self):
        return len(self.planned)

    def run(self):
        if self.check_mode:
            return self.planned
        for fn in self._fns:
            if fn is not None:
                fn()
        return self.planned


class Manager(object):
    """The one protocol every barepod manager follows (a module is this plus its spec).

    ``Manager(params, check_mode=False, diff=False).run()`` observes, plans (pure), applies the
    plan behind the single check-mode guard (Actions) and returns ``result(...)``: a dict with
    ``changed``, ``actions``, ``diff`` (``{before, after}``, or None when not computed),
    ``warnings`` (a list of strings) and the manager's facts. ``diff=False`` lets a manager skip
    work that only --diff needs; every input check lives in the manager, not in main().
    """

    def __init__(self, params, check_mode=False, diff=False):
        self.params = params
        self.check_mode = check_mode
        self.want_diff = diff

    def run(self):
        raise NotImplementedError


def result(changed, actions=(), diff=None, warnings=(), **facts):
    """A manager's result in the protocol's shape (see Manager)."""
    out = dict(facts)
    out.update(changed=bool(changed), actions=list(actions), diff=diff, warnings=list(warnings))
    return out


def read_text(path, default=None):
    try:
        with open(path, 'r') as f:
            return f.read()
    except (IOError, OSError) as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return default
        raise


def makedirs(path, mode=0o755):
    """mkdir -p that reports whether it created anything. Safe against a concurrent creator
    (parallel module runs making the same state directory): whoever loses the race sees it there."""
    if os.path.isdir(path):
        return False
    try:
        os.makedirs(path, mode)
    except FileExistsError:
        if os.path.isdir(path):
            return False
        raise
    return True


def write_if_changed(path, data, mode=0o644):
    """Atomically write `data` (str or bytes) to path unless it already holds exactly that.

    Returns True when the file was written. The temporary file is created in the same
    directory and renamed over the target, so readers never see a partial file.
    """
    if isinstance(data, str):
        data = data.encode('utf-8')
    try:
        with open(path, 'rb') as f:
            if f.read() == data:
                st = os.fstat(f.fileno())
                if (st.st_mode & 0o7777) == mode:
                    return False
    except (IOError, OSError) as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise
    atomic_write(path, data, mode)
    return True


def fsync_dir(path):
    """fsync a directory, so the renames and links made in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, data, mode=0o644, fsync=True):
    """Write bytes to a temporary file beside path and rename it over path: readers see the
    old or the new content, never a part. fsync=False for caches that need not survive a crash."""
    fd, tmp = tempfile.mkstemp(prefix='.barepod-', dir=os.path.dirname(path) or '.')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextlib.contextmanager
def exclusive_lock(path, mode=0o644):
    """flock(LOCK_EX) on path for the with block (closing the fd drops it): the one lock helper
    of the IPAM store, the pod record and the rootfs directories.

    mode: create path as a lock file with this mode if needed. None: lock an existing file or
    directory through a read-only fd (taking the lock writes nothing), and lock nothing when it
    does not exist yet (nothing to race on)."""
    if mode is None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            yield
            return
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def dump_json(obj):
    """Stable JSON (sorted keys) so equal records serialise to equal bytes."""
    return json.dumps(obj, indent=2, sort_keys=True) + '\n'


def pid_alive(pid, starttime=None):
    """True when pid exists (and, if given, still has the same start time: no pid reuse)."""
    if not pid:
        return False
    try:
        with open('/proc/%d/stat' % int(pid), 'r') as f:
            stat = f.read()
    except (IOError, OSError):
        return False
    # field 22 (starttime) comes after the parenthesised comm, which may hold spaces
    rest = stat.rsplit(')', 1)[1].split()
    if rest[0] == 'Z':
        return False
    if starttime is not None and int(rest[19]) != int(starttime):
        return False
    return True


def pid_starttime(pid):
    with open('/proc/%d/stat' % int(pid), 'r') as f:
        stat = f.read()
    return int(stat.rsplit(')', 1)[1].split()[19])


FAILPOINTS_ENV = 'BAREPOD_FAILPOINTS'


def failpoint(name):
    """Fault injection for the reliability tests (containerd-style failpoints).

    When $BAREPOD_FAILPOINTS (comma-separated) holds `name=kill` the current process dies
    with SIGKILL right here; `name=error` (or a bare `name`) raises BarepodError('failpoint
    <name>'). Unset (always, outside tests) it costs one environment lookup.
    """
    spec = os.environ.get(FAILPOINTS_ENV)
    if not spec:
        return
    for item in spec.split(','):
        key, mode = (item.strip().split('=', 1) + [''])[:2]
        if key != name:
            continue
        if mode == 'kill':
            import signal
            os.kill(os.getpid(), signal.SIGKILL)
        raise BarepodError('failpoint %s' % name)


def failpoint_armed(name):
    """True when $BAREPOD_FAILPOINTS names `name` (for failpoints that must act before firing)."""
    spec = os.environ.get(FAILPOINTS_ENV)
    return bool(spec) and name in [item.strip().partition('=')[0] for item in spec.split(',')]


def failpoint_partial(name, payload, apply_first):
    """Failpoint for an iptables-restore batch: when `name` is set, apply only the first table
    of the payload (up to its first COMMIT) with apply_first(text), then trigger failpoint(name)
    -- a sync that dies between the tables. Otherwise return the payload unchanged."""
    if not failpoint_armed(name):
        return payload
    end = payload.find('COMMIT\n')
    if end >= 0:
        apply_first(payload[:end + len('COMMIT\n')])
    failpoint(name)
    return payload
