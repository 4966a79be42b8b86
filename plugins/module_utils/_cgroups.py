# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cgroups v1, v2 and hybrid: detection, the kubelet cgroupfs layout, limit files with the
kernel's own normalisation, the cgroupfs readers and a fast tree walker (shared with the
audit, _cgaudit), and the limit writer (cgroup_limit's CgroupLimitManager).

Detection reads /proc/self/mountinfo (path is a parameter) and keeps the cgroup and cgroup2
mounts below `cgroup_root`: only v1 mounts -> 'v1'; only a cgroup2 mount at the root -> 'v2';
both -> 'hybrid' (controllers on v1, the cgroup2 mount used for process placement only,
like runc's "unified" path). `hierarchy` can force 'v1' (controllers at <root>/<name>) or
'v2' (<root> is the unified mount) so tests can point the code at a fixture tree.

Normalisation (what the kernel reads back):
- v1 memory.limit_in_bytes / memory.memsw.limit_in_bytes: rounded down to the page size;
  "unlimited" (-1) reads back as PAGE_COUNTER_MAX * PAGE_SIZE (9223372036854771712 on 4 KiB
  pages). v2 memory.max / memory.swap.max: rounded down to the page size, "max" when unlimited.
- v1 cpu.cfs_quota_us: -1 when unlimited; v2 cpu.max: "max <period>" or "<quota> <period>".
- v1 cpu.shares is clamped by the kernel to [2, 262144]; v2 cpu.weight is 1..10000.
- pids.max: "max" or a number. cpuset lists: "0,1,2" reads back as "0-2".
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time

from ansible_collections.barepod.linux.plugins.module_utils import _defaults
from ansible_collections.barepod.linux.plugins.module_utils._common import (
    Actions, BarepodError, Manager, failpoint, result)

DEFAULT_CGROUP_ROOT = _defaults.CGROUP_ROOT
DEFAULT_MOUNTINFO = _defaults.MOUNTINFO
DEFAULT_PARENT = _defaults.CGROUP_PARENT
DEFAULT_CONTROLLERS = ('cpu', 'cpuacct', 'cpuset', 'memory', 'pids')
KNOWN_CONTROLLERS = frozenset((
    'cpu', 'cpuacct', 'cpuset', 'memory', 'pids', 'devices', 'freezer', 'blkio', 'io',
    'net_cls', 'net_prio', 'perf_event', 'hugetlb', 'rdma', 'misc'))
PAGE_SIZE = os.sysconf('SC_PAGE_SIZE') if hasattr(os, 'sysconf') else 4096
UNLIMITED = 'max'

_SEG_RE = re.compile(r'^[A-Za-z0-9_.:@-]+\Z')
_CPULIST_RE = re.compile(r'^\d+(-\d+)?(,\d+(-\d+)?)*\Z')


# ---------------------------------------------------------------------------- detection

def _unescape(s):
    return re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), s)


def parse_mountinfo(text):
    """[(mountpoint, fstype, super_options)] for every line of a mountinfo file."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if ' - ' not in line or len(parts) < 10:
            continue
        i = parts.index('-')
        out.append((_unescape(parts[4]), parts[i + 1], parts[i + 3] if len(parts) > i + 3 else ''))
    return out


class Layout(object):
    """Where each controller lives on a host."""

    def __init__(self, mode, v1=None, unified=None, v2_controllers=()):
        self.mode = mode
        self.v1 = dict(v1 or {})          # controller -> mountpoint
        self.unified = unified            # cgroup2 mountpoint or None
        self.v2_controllers = set(v2_controllers)

    def location(self, controller):
        """('v1'|'v2', mountpoint) or None when the host does not have it."""
        if controller in self.v1:
            return ('v1', self.v1[controller])
        name = 'cpu' if controller == 'cpuacct' else controller
        if self.unified and name in self.v2_controllers:
            return ('v2', self.unified)
        return None

    def available(self):
        return sorted(set(self.v1) | set(self.v2_controllers))

    def as_dict(self):
        return {'mode': self.mode, 'v1': dict(sorted(self.v1.items())), 'unified': self.unified,
                'v2_controllers': sorted(self.v2_controllers)}


def _v2_controllers(mount):
    try:
        with open(os.path.join(mount, 'cgroup.controllers')) as f:
            return f.read().split()
    except (IOError, OSError):
        return []


def detect(cgroup_root=DEFAULT_CGROUP_ROOT, mountinfo=DEFAULT_MOUNTINFO, hierarchy='auto'):
    root = os.path.abspath(cgroup_root)
    if hierarchy == 'v2':
        if not os.path.isdir(root):
            raise BarepodError('%s is not a directory' % root, field='cgroup_root', value=cgroup_root)
        return Layout('v2', unified=root, v2_controllers=_v2_controllers(root))
    if hierarchy == 'v1':
        v1 = {}
        try:
            names = sorted(os.listdir(root))
        except OSError as e:
            raise BarepodError('cannot list %s: %s' % (root, e.strerror), field='cgroup_root', value=cgroup_root)
        for n in names:
            p = os.path.join(root, n)
            if os.path.isdir(p) and not os.path.islink(p):
                for c in n.split(','):
                    if c in KNOWN_CONTROLLERS:
                        v1.setdefault(c, p)
        return Layout('v1', v1=v1)
    try:
        with open(mountinfo) as f:
            mounts = parse_mountinfo(f.read())
    except (IOError, OSError) as e:
        raise BarepodError('cannot read %s: %s' % (mountinfo, e.strerror), field='mountinfo', value=mountinfo)
    v1 = {}
    unified = None
    prefix = root.rstrip('/') + '/'
    for mp, fstype, sopts in mounts:
        if mp != root and not mp.startswith(prefix):
            continue
        if fstype == 'cgroup2':
            unified = mp
        elif fstype == 'cgroup':
            for opt in sopts.split(','):
                if opt in KNOWN_CONTROLLERS:
                    v1[opt] = mp
    if not v1 and not unified:
        raise BarepodError('no cgroup or cgroup2 mount below %s in %s' % (root, mountinfo),
                           field='cgroup_root', value=cgroup_root)
    ctrls = _v2_controllers(unified) if unified else []
    if hierarchy == 'hybrid' or (v1 and unified):
        mode = 'hybrid' if unified else 'v1'
    elif unified:
        mode = 'v2'
    else:
        mode = 'v1'
    return Layout(mode, v1=v1, unified=unified, v2_controllers=ctrls)


# ---------------------------------------------------------------------------- paths

def validate_relpath(field, value, allow_empty=False):
    """A cgroup path relative to a hierarchy root: no '..', not absolute, plain segments."""
    if value is None or value == '':
        if allow_empty:
            return ''
        raise BarepodError('must not be empty', field=field, value=value)
    if not isinstance(value, str):
        raise BarepodError('must be a string', field=field, value=value)
    if value.startswith('/'):
        raise BarepodError('%r must be relative to the cgroup root (no leading "/")' % value,
                           field=field, value=value)
    segs = [s for s in value.split('/') if s]
    for s in segs:
        if s in ('.', '..'):
            raise BarepodError('%r contains %r: cgroup paths must stay below the cgroup root'
                               % (value, s), field=field, value=value)
        if not _SEG_RE.match(s):
            raise BarepodError('%r: segment %r may only hold letters, digits and "_.:@-"'
                               % (value, s), field=field, value=value)
    return '/'.join(segs)


def pod_relpath(parent, qos, uid, container=None):
    from ansible_collections.barepod.linux.plugins.module_utils._qos import QOS_DIR
    parts = [parent] if parent else []
    if QOS_DIR[qos]:
        parts.append(QOS_DIR[qos])
    parts.append('pod' + uid)
    if container:
        parts.append(container)
    return '/'.join(parts)


_POD_SEG_RE = re.compile(r'^(?:kubepods-(?:(burstable|besteffort)-)?)?pod([0-9a-zA-Z_-]+?)(?:\.slice)?\Z')


def parse_pod_path(rel):
    """(qos_class, pod_uid, container) from a cgroupfs or systemd style path, else Nones."""
    segs = rel.split('/') if rel else []
    for i, s in enumerate(segs):
        m = _POD_SEG_RE.match(s)
        if not m:
            continue
        if s.endswith('.slice'):
            q = m.group(1)
            uid = m.group(2).replace('_', '-')
        else:
            q = segs[i - 1] if i > 0 and segs[i - 1] in ('burstable', 'besteffort') else None
            uid = m.group(2)
        qos = {'burstable': 'Burstable', 'besteffort': 'BestEffort'}.get(q, 'Guaranteed')
        container = segs[i + 1] if i + 1 < len(segs) else None
        return qos, uid, container
    return None, None, None


# ---------------------------------------------------------------------------- values

def parse_cpulist(field, value):
    if value is None:
        return None
    s = str(value).strip().replace(' ', '')
    if s == '':
        return ''
    if not _CPULIST_RE.match(s):
        raise BarepodError('%r is not a cpu/node list like "0-3,5"' % (value,), field=field, value=value)
    ids = set()
    for part in s.split(','):
        a, _sep, b = part.partition('-')
        lo, hi = int(a), int(b or a)
        if hi < lo:
            raise BarepodError('%r: range %s is backwards' % (value, part), field=field, value=value)
        ids.update(range(lo, hi + 1))
    return format_cpulist(ids)


def format_cpulist(ids):
    ids = sorted(ids)
    out = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else '%d-%d' % (ids[i], ids[j]))
        i = j + 1
    return ','.join(out)


def _int_or_max(raw):
    raw = raw.strip()
    if raw == 'max':
        return UNLIMITED
    return int(raw)


def _mem_norm(raw, page=PAGE_SIZE):
    v = _int_or_max(raw) if isinstance(raw, str) else raw
    if v is None or v == UNLIMITED or v < 0:
        return UNLIMITED
    if v >= ((2 ** 63 - 1) // page) * page:
        return UNLIMITED
    return (v // page) * page


def normalise(fname, raw, page=PAGE_SIZE):
    """The comparable form of a file's content (as read) or of a value we intend to write."""
    if raw is None:
        return None
    if fname in ('memory.limit_in_bytes', 'memory.memsw.limit_in_bytes', 'memory.max',
                 'memory.swap.max'):
        return _mem_norm(raw, page)
    if fname == 'cpu.cfs_quota_us':
        v = int(str(raw).strip())
        return UNLIMITED if v < 0 else v
    if fname == 'cpu.max':
        q, _sep, p = str(raw).strip().partition(' ')
        return '%s %s' % ('max' if q == 'max' or q == '-1' else int(q), int(p or 100000))
    if fname == 'cpu.shares':
        return max(2, min(262144, int(str(raw).strip())))
    if fname == 'pids.max':
        return _int_or_max(str(raw))
    if fname in ('cpuset.cpus', 'cpuset.mems'):
        return parse_cpulist(fname, str(raw).strip())
    if fname == 'memory.oom_control':
        s = str(raw)
        for line in s.splitlines():
            if line.startswith('oom_kill_disable'):
                return int(line.split()[1])
        return int(s.strip())
    return int(str(raw).strip())


# ---------------------------------------------------------------------------- io

def read_file(path):
    """Content of a small cgroup file, or None when absent. os.open/os.read: no buffering."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536).decode('utf-8', 'replace')
    except OSError:
        return None
    finally:
        os.close(fd)


def explain_write_error(path, value, err, usage=None):
    fname = os.path.basename(path)
    reason = os.strerror(err.errno) if err.errno else str(err)
    msg = 'the kernel refused writing %r to %s: %s (%s)' % (
        str(value), path, reason, errno.errorcode.get(err.errno, err.errno))
    if err.errno == errno.EBUSY and fname.startswith('memory.') and 'limit' in fname or \
            (err.errno == errno.EBUSY and fname == 'memory.max'):
        msg += '; the limit is below the current usage%s and the kernel could not reclaim enough' % (
            ' (%s bytes)' % usage if usage is not None else '')
    elif err.errno == errno.EINVAL and fname == 'memory.memsw.limit_in_bytes':
        msg += '; memory+swap must be >= memory.limit_in_bytes'
    elif err.errno == errno.ENOSPC and fname in ('cgroup.procs', 'tasks'):
        msg += '; the cgroup has no cpus/mems (cpuset) or violates the no-internal-process rule'
    elif err.errno == errno.EBUSY and fname == 'cgroup.procs':
        msg += '; on cgroup v2 a cgroup with controllers enabled for its children cannot hold processes'
    elif err.errno == errno.ESRCH:
        msg += '; no such process'
    return msg


def write_file(path, value):
    with open(path, 'w') as f:
        f.write(str(value))


def read_procs(d):
    raw = read_file(os.path.join(d, 'cgroup.procs'))
    if not raw:
        return []
    return [int(x) for x in raw.split()]


def procs_recursive(d):
    out = []
    for dirpath, _dirnames, _files in os.walk(d):
        out.extend(read_procs(dirpath))
    return out


def rmdir_tree(d):
    """rmdir a cgroup and its child cgroups, deepest first (cgroup files cannot be unlinked)."""
    removed = []
    if not os.path.isdir(d):
        return removed
    for dirpath, _dirnames, _files in os.walk(d, topdown=False):
        os.rmdir(dirpath)
        removed.append(dirpath)
    return removed


def rmdir_tree_fixture(d):
    """Like rmdir_tree for a fixture tree made of plain files (tests): unlink files first."""
    import shutil
    if os.path.isdir(d):
        shutil.rmtree(d)
        return [d]
    return []


def kill_and_wait(dirs, timeout=10.0):
    deadline = time.time() + timeout
    while True:
        pids = sorted(set(p for d in dirs for p in procs_recursive(d)))
        if not pids:
            return True
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        if time.time() > deadline:
            raise BarepodError('processes %s are still in %s after SIGKILL' % (pids, dirs),
                               field='on_processes', value='kill')
        time.sleep(0.02)


# ---------------------------------------------------------------------------- walker

def _kv(raw):
    out = {}
    if raw:
        for line in raw.splitlines():
            k, _sep, v = line.partition(' ')
            try:
                out[k] = int(v)
            except ValueError:
                pass
    return out


def _num(raw):
    if raw is None:
        return None
    raw = raw.strip()
    if raw == 'max':
        return UNLIMITED
    try:
        return int(raw)
    except ValueError:
        return None


def walk(top, max_depth=None):
    """Relative paths of every directory below (and including) top, via os.scandir only."""
    out = ['']
    stack = [('', top, 0)]
    while stack:
        rel, d, depth = stack.pop()
        if max_depth is not None and depth >= max_depth:
            continue
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    r = e.name if not rel else rel + '/' + e.name
                    out.append(r)
                    stack.append((r, e.path, depth + 1))
    return out


# ---------------------------------------------------------------------------- limits

def fs_type(path, mountinfo=DEFAULT_MOUNTINFO):
    """fstype of the mount holding path (longest mountpoint prefix), or None."""
    try:
        with open(mountinfo) as f:
            mounts = parse_mountinfo(f.read())
    except (IOError, OSError):
        return None
    path = os.path.abspath(path)
    best, fst = '', None
    for mp, fstype, _opts in mounts:
        if (path == mp or path.startswith(mp.rstrip('/') + '/')) and len(mp) >= len(best):
            best, fst = mp, fstype
    return fst


def _memory_value(field, value):
    from ansible_collections.barepod.linux.plugins.module_utils._quantity import to_bytes
    if value is None:
        return None
    if isinstance(value, str) and value.strip() in ('max', 'unlimited'):
        return UNLIMITED
    return to_bytes(value, field)


def build_config(p):
    """desired(): validated, normalised settings from module params (no I/O).

    Returns (qos_class, relpath, cfg) where cfg maps setting -> value; a setting absent
    from cfg is not managed.
    """
    from ansible_collections.barepod.linux.plugins.module_utils import _qos
    from ansible_collections.barepod.linux.plugins.module_utils._common import (
        validate_uid, validate_dns_label)
    uid = validate_uid('pod_uid', p.get('pod_uid'))
    container = p.get('container')
    if container:
        validate_dns_label('container', container)
    parent = validate_relpath('parent', p.get('parent', DEFAULT_PARENT), allow_empty=True)
    period = p.get('cpu_period') or _qos.QUOTA_PERIOD
    if not 1000 <= int(period) <= 1000000:
        raise BarepodError('must be between 1000 and 1000000 microseconds', field='cpu_period', value=period)
    containers = _qos.normalise_containers(p.get('containers'), 'containers')
    res = None
    if p.get('resources') is not None:
        res = _qos._norm_container({'name': container, 'resources': p['resources']}, 0, 'resources')
    cfg = {}
    if container:
        src = res
        if src is None:
            for c in containers:
                if c['name'] == container:
                    src = c
            if containers and src is None:
                raise BarepodError('container %r is not in containers (%s)' % (
                    container, ', '.join(str(c['name']) for c in containers)), field='container', value=container)
        if src is not None:
            cfg.update(_qos.container_config(src, period))
    else:
        pod = containers or ([res] if res is not None else [])
        if pod:
            pc = _qos.pod_config(pod, period)
            pc.pop('qos_class')
            cfg.update(pc)
    computed = _qos.qos_class(containers or ([res] if res is not None else []))
    qos = p.get('qos_class') or computed
    if qos not in _qos.QOS_CLASSES:
        raise BarepodError('must be one of %s' % ', '.join(_qos.QOS_CLASSES), field='qos_class', value=qos)
    if not container and not cfg and qos == _qos.BEST_EFFORT and (containers or res is not None):
        cfg['cpu_shares'] = _qos.MIN_SHARES
    if p.get('memory_limit') is not None:
        m = _memory_value('memory_limit', p['memory_limit'])
        cfg['memory_limit'] = None if m == UNLIMITED else m
    if p.get('swap') is not None:
        s = _memory_value('swap', p['swap'])
        cfg['swap'] = None if s == UNLIMITED else s
    if p.get('swappiness') is not None:
        if not 0 <= int(p['swappiness']) <= 100:
            raise BarepodError('must be 0..100', field='swappiness', value=p['swappiness'])
        cfg['swappiness'] = int(p['swappiness'])
    if p.get('oom_kill_disable') is not None:
        cfg['oom_kill_disable'] = 1 if p['oom_kill_disable'] else 0
    if p.get('pids_max') is not None:
        v = str(p['pids_max']).strip()
        if v == 'max':
            cfg['pids_max'] = UNLIMITED
        elif v.isdigit() and v.isascii() and int(v) > 0:
            cfg['pids_max'] = int(v)
        else:
            raise BarepodError('must be a positive integer or "max"', field='pids_max', value=p['pids_max'])
    for key in ('cpuset_cpus', 'cpuset_mems'):
        if p.get(key) is not None:
            cfg[key] = parse_cpulist(key, p[key])
    rel = pod_relpath(parent, qos, uid, container)
    return qos, rel, cfg


CONTROLLER_OF = {
    'memory_limit': 'memory', 'swap': 'memory', 'swappiness': 'memory', 'oom_kill_disable': 'memory',
    'cpu_shares': 'cpu', 'cpu_quota': 'cpu', 'cpu_period': 'cpu', 'pids_max': 'pids',
    'cpuset_cpus': 'cpuset', 'cpuset_mems': 'cpuset',
}


def desired_files(layout, cfg, warnings):
    """[(controller, version, filename, value_to_write, normalised)] in write order."""
    from ansible_collections.barepod.linux.plugins.module_utils._qos import shares_to_weight
    out = []
    for key in cfg:
        ctrl = CONTROLLER_OF[key]
        if layout.location(ctrl) is None:
            raise BarepodError('the %s controller is not available on this host (%s mode; available: %s)'
                               % (ctrl, layout.mode, ', '.join(layout.available()) or 'none'),
                               field=key, value=cfg[key])
    ver = {c: (layout.location(c) or (None,))[0] for c in ('memory', 'cpu', 'pids', 'cpuset')}

    def add(ctrl, fname, write, norm=None):
        out.append((ctrl, ver[ctrl], fname, str(write), normalise(fname, str(write)) if norm is None else norm))

    if 'memory_limit' in cfg or 'swap' in cfg or 'swappiness' in cfg or 'oom_kill_disable' in cfg:
        mem = cfg.get('memory_limit')
        if ver['memory'] == 'v1':
            if 'memory_limit' in cfg:
                add('memory', 'memory.limit_in_bytes', -1 if mem is None else mem)
            if 'swap' in cfg:
                if cfg['swap'] is None:
                    add('memory', 'memory.memsw.limit_in_bytes', -1)
                else:
                    if mem is None:
                        raise BarepodError('a swap limit needs a memory limit on cgroup v1 '
                                           '(memory.memsw.limit_in_bytes is memory+swap)', field='swap',
                                           value=cfg['swap'])
                    add('memory', 'memory.memsw.limit_in_bytes', mem + cfg['swap'])
            if 'swappiness' in cfg:
                add('memory', 'memory.swappiness', cfg['swappiness'])
            if 'oom_kill_disable' in cfg:
                add('memory', 'memory.oom_control', cfg['oom_kill_disable'])
        else:
            if 'memory_limit' in cfg:
                add('memory', 'memory.max', 'max' if mem is None else mem)
            if 'swap' in cfg:
                add('memory', 'memory.swap.max', 'max' if cfg['swap'] is None else cfg['swap'])
            if 'swappiness' in cfg:
                warnings.append('swappiness: cgroup v2 has no per-cgroup swappiness; ignored')
            if 'oom_kill_disable' in cfg:
                raise BarepodError('cgroup v2 has no memory.oom_control (oom_kill_disable is v1 only)',
                                   field='oom_kill_disable', value=cfg['oom_kill_disable'])
    if 'cpu_shares' in cfg or 'cpu_quota' in cfg:
        period = cfg.get('cpu_period', 100000)
        quota = cfg.get('cpu_quota')
        if ver['cpu'] == 'v1':
            if 'cpu_shares' in cfg:
                add('cpu', 'cpu.shares', cfg['cpu_shares'])
            if 'cpu_quota' in cfg:
                add('cpu', 'cpu.cfs_period_us', period)
                add('cpu', 'cpu.cfs_quota_us', -1 if quota is None else quota)
        else:
            if 'cpu_shares' in cfg:
                add('cpu', 'cpu.weight', shares_to_weight(cfg['cpu_shares']))
            if 'cpu_quota' in cfg:
                add('cpu', 'cpu.max', '%s %d' % ('max' if quota is None else quota, period))
    if 'pids_max' in cfg:
        add('pids', 'pids.max', cfg['pids_max'])
    if 'cpuset_cpus' in cfg:
        add('cpuset', 'cpuset.cpus', cfg['cpuset_cpus'])
    if 'cpuset_mems' in cfg:
        add('cpuset', 'cpuset.mems', cfg['cpuset_mems'])
    return out


def _inf(v):
    return float('inf') if v in (UNLIMITED, None) else v


class CgroupLimit(object):
    """observe -> desired -> plan -> apply for one pod (or container) cgroup."""

    def __init__(self, params, actions):
        self.p = params
        self.actions = actions
        self.warnings = []
        self.diff = {'before': {}, 'after': {}}
        self.root = params.get('cgroup_root') or DEFAULT_CGROUP_ROOT
        self.mountinfo = params.get('mountinfo') or DEFAULT_MOUNTINFO
        self.qos, self.rel, self.cfg = build_config(params)
        self.uid = params['pod_uid']
        self.container = params.get('container') or None
        self.parent = validate_relpath('parent', params.get('parent', DEFAULT_PARENT), allow_empty=True)
        self.layout = detect(self.root, self.mountinfo, params.get('hierarchy') or 'auto')
        self.page = PAGE_SIZE

    # which hierarchies this cgroup lives in: controller -> mount
    def placement(self):
        wanted = self.p.get('controllers')
        explicit = wanted is not None
        wanted = list(wanted) if explicit else list(DEFAULT_CONTROLLERS)
        for c in self.cfg:
            if CONTROLLER_OF[c] not in wanted:
                wanted.append(CONTROLLER_OF[c])
        mounts = {}
        for c in wanted:
            if c not in KNOWN_CONTROLLERS:
                raise BarepodError('unknown controller %r' % c, field='controllers', value=c)
            loc = self.layout.location(c)
            if loc is None:
                if explicit:
                    raise BarepodError('the %s controller is not available on this host (%s mode; available: %s)'
                                       % (c, self.layout.mode, ', '.join(self.layout.available()) or 'none'),
                                       field='controllers', value=c)
                continue
            mounts[c] = loc[1]
        if self.layout.unified:
            mounts.setdefault('unified', self.layout.unified)
        return mounts

    def dir_for(self, mount):
        return os.path.join(mount, self.rel)

    def _chain(self, mount):
        segs = self.rel.split('/')
        return [os.path.join(mount, *segs[:i + 1]) for i in range(len(segs))]

    def _wrap(self, fn, path, value, usage_file=None):
        def run():
            try:
                fn()
            except OSError as e:
                usage = _num(read_file(usage_file)) if usage_file else None
                raise BarepodError(explain_write_error(path, value, e, usage), field=os.path.basename(path),
                                   value=value)
        return run

    def _validate_pids(self):
        pids = []
        for pid in self.p.get('pids') or []:
            try:
                pid = int(pid)
            except (TypeError, ValueError):
                raise BarepodError('%r is not a process id' % (pid,), field='pids', value=pid)
            if pid <= 0 or not os.path.exists('/proc/%d' % pid):
                raise BarepodError('no such process %d' % pid, field='pids', value=pid)
            pids.append(pid)
        return pids

    def present(self):
        mounts = self.placement()
        pids = self._validate_pids()
        files = desired_files(self.layout, self.cfg, self.warnings)
        by_mount = {}
        for c, m in mounts.items():
            by_mount.setdefault(m, []).append(c)
        # 1. directories, top-down
        for m in sorted(by_mount):
            for d in self._chain(m):
                if not os.path.isdir(d):
                    self.diff['before'][d] = 'absent'
                    self.diff['after'][d] = 'present'
                    v1_cpuset = 'cpuset' in by_mount[m] and self.layout.location('cpuset')[0] == 'v1'
                    self.actions.add('mkdir', d, self._mkdir_fn(d, v1_cpuset))
        # 2. cgroup v2: enable controllers in the ancestors' subtree_control
        v2_ctrls = sorted(set(f[0] for f in files if f[1] == 'v2'))
        if v2_ctrls and self.layout.unified:
            mount = self.layout.unified
            root_ctrls = set(_v2_controllers(mount))
            for c in v2_ctrls:
                if c not in root_ctrls:
                    raise BarepodError('controller %s is not in %s/cgroup.controllers (%s)' % (
                        c, mount, ' '.join(sorted(root_ctrls)) or 'empty'), field='controllers', value=c)
            for anc in [mount] + self._chain(mount)[:-1]:
                raw = read_file(os.path.join(anc, 'cgroup.subtree_control'))
                have = set(x.lstrip('+') for x in (raw or '').split())
                missing = [c for c in v2_ctrls if c not in have]
                if missing:
                    path = os.path.join(anc, 'cgroup.subtree_control')
                    val = ' '.join('+' + c for c in sorted(have | set(missing)))
                    self.diff['before'][path] = ' '.join(sorted(have))
                    self.diff['after'][path] = ' '.join(sorted(have | set(missing)))
                    self.actions.add('enable_controllers', path,
                                     self._wrap(lambda p=path, v=val: write_file(p, v), path, val),
                                     controllers=missing)
        # 3. limit files, compared after the kernel's normalisation
        writes = []
        for ctrl, _ver, fname, value, want in files:
            path = os.path.join(self.dir_for(mounts[ctrl]), fname)
            raw = read_file(path)
            cur = normalise(fname, raw, self.page) if raw is not None else None
            if cur != want:
                writes.append((ctrl, fname, path, value, cur, want))
        names = [w[1] for w in writes]
        if 'memory.limit_in_bytes' in names and 'memory.memsw.limit_in_bytes' in names:
            mem = [w for w in writes if w[1] == 'memory.limit_in_bytes'][0]
            sw = [w for w in writes if w[1] == 'memory.memsw.limit_in_bytes'][0]
            if _inf(mem[5]) > _inf(sw[4]):
                writes.remove(sw)
                writes.insert(writes.index(mem), sw)
        for _ctrl, fname, path, value, cur, want in writes:
            usage = None
            if fname.startswith('memory.'):
                usage = os.path.join(os.path.dirname(path), 'memory.usage_in_bytes' if fname.endswith(
                    '_in_bytes') else 'memory.current')
            self.diff['before'][path] = cur
            self.diff['after'][path] = want
            self.actions.add('write', path, self._wrap(lambda p=path, v=value: write_file(p, v), path, value, usage),
                             before=cur, after=want)
        # 4. processes, after the limits (as the chapter does)
        for m in sorted(by_mount):
            d = self.dir_for(m)
            have = set(read_procs(d)) if os.path.isdir(d) else set()
            for pid in pids:
                if pid not in have:
                    path = os.path.join(d, 'cgroup.procs')
                    self.diff['after'].setdefault(path, [])
                    self.diff['after'][path].append(pid)
                    self.actions.add('attach', path, self._wrap(lambda p=path, v=pid: write_file(p, v), path, pid),
                                     pid=pid)
        self.actions.run()
        return self.result(mounts, files)

    def _mkdir_fn(self, d, copy_cpuset):
        def run():
            try:
                os.mkdir(d, 0o755)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise BarepodError('cannot create cgroup %s: %s' % (d, os.strerror(e.errno)),
                                       field='cgroup', value=d)
            if copy_cpuset:
                # v1 cpuset children start empty and refuse tasks until cpus/mems are set
                parent = os.path.dirname(d)
                for f in ('cpuset.cpus', 'cpuset.mems'):
                    cur = (read_file(os.path.join(d, f)) or '').strip()
                    if not cur:
                        val = (read_file(os.path.join(parent, f)) or '').strip()
                        if val:
                            write_file(os.path.join(d, f), val)
            failpoint('cgroup-before-limits')
        return run

    def absent(self):
        mounts = {}
        for c, m in self.layout.v1.items():
            mounts.setdefault(m, c)
        if self.layout.unified:
            mounts.setdefault(self.layout.unified, 'unified')
        # the pod may sit under any QoS class directory: look in all of them
        from ansible_collections.barepod.linux.plugins.module_utils._qos import QOS_CLASSES
        rels = [self.rel] + [pod_relpath(self.parent, q, self.uid, self.container)
                             for q in QOS_CLASSES if q != self.qos]
        dirs = [os.path.join(m, r) for r in rels for m in sorted(mounts) if os.path.isdir(os.path.join(m, r))]
        procs = sorted(set(p for d in dirs for p in procs_recursive(d)))
        mode = self.p.get('on_processes') or 'fail'
        if procs:
            if mode == 'fail':
                raise BarepodError('cgroup %s still holds processes %s; set on_processes=kill to kill them '
                                   'or on_processes=move to move them to the parent cgroup'
                                   % (self.rel, ' '.join(map(str, procs))), field='on_processes', value=mode)
            if mode == 'kill':
                self.actions.add('kill', self.rel, lambda: kill_and_wait(dirs), pids=procs)
            else:
                for d in dirs:
                    parent = os.path.dirname(d)
                    self.actions.add('move', d, self._move_fn(d, parent), to=parent,
                                     pids=sorted(set(procs_recursive(d))))
        for d in dirs:
            self.diff['before'][d] = 'present'
            self.diff['after'][d] = 'absent'
            self.actions.add('rmdir', d, self._rmdir_fn(d))
        self.actions.run()
        return {'cgroup': self.rel, 'qos_class': self.qos, 'hierarchy': self.layout.as_dict(),
                'removed': dirs, 'processes': procs}

    def _move_fn(self, d, parent):
        def run():
            for sub in walk(d)[::-1]:
                src = os.path.join(d, sub) if sub else d
                for pid in read_procs(src):
                    path = os.path.join(parent, 'cgroup.procs')
                    self._wrap(lambda p=path, v=pid: write_file(p, v), path, pid)()
        return run

    def _rmdir_fn(self, d):
        def run():
            try:
                rmdir_tree(d)
            except OSError as e:
                fst = fs_type(d, self.mountinfo)
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and fst not in ('cgroup', 'cgroup2'):
                    rmdir_tree_fixture(d)   # a fixture tree of plain files, not a cgroupfs
                    return
                raise BarepodError('cannot remove cgroup %s: %s' % (d, os.strerror(e.errno)), field='state',
                                   value='absent')
        return run

    def result(self, mounts, files):
        paths = {c: self.dir_for(m) for c, m in sorted(mounts.items())}
        settings = {}
        for ctrl, _ver, fname, _value, want in files:
            raw = read_file(os.path.join(self.dir_for(mounts[ctrl]), fname))
            settings[fname] = normalise(fname, raw, self.page) if raw is not None else want
        usage = {}
        if self.layout.location('memory'):
            v, m = self.layout.location('memory')
            d = self.dir_for(m)
            usage['memory_current'] = _num(read_file(os.path.join(
                d, 'memory.usage_in_bytes' if v == 'v1' else 'memory.current')))
        if self.layout.location('pids'):
            usage['pids_current'] = _num(read_file(os.path.join(self.dir_for(self.layout.location('pids')[1]),
                                                                'pids.current')))
        first = paths.get('memory') or next(iter(paths.values()), None)
        usage['procs'] = read_procs(first) if first and os.path.isdir(first) else []
        return {'cgroup': self.rel, 'qos_class': self.qos, 'hierarchy': self.layout.as_dict(),
                'paths': paths, 'settings': settings, 'usage': usage}

    def record_value(self, res):
        return {'hierarchy': self.layout.mode, 'qos_class': self.qos, 'path': self.rel,
                'paths': res.get('paths', {})}


class CgroupLimitManager(Manager):
    """cgroup_limit: one pod (or container) cgroup converged, then recorded in the pod record."""

    def run(self):
        params, check_mode = self.params, self.check_mode
        actions = Actions(check_mode)
        mgr = CgroupLimit(params, actions)
        if (params.get('state') or 'present') == 'present':
            res = mgr.present()
        else:
            res = mgr.absent()
        changed = bool(actions)
        ns, name = params.get('namespace'), params.get('name')
        if ns and name:
            changed = _record(params, mgr, res, check_mode) or changed
        res.pop('changed', None)
        res.pop('actions', None)
        return result(changed, actions.planned, mgr.diff, mgr.warnings, **res)


def run_limit(params, check_mode=False):
    """CgroupLimitManager(params, check_mode).run()."""
    return CgroupLimitManager(params, check_mode).run()


def _record(params, mgr, res, check_mode):
    from ansible_collections.barepod.linux.plugins.module_utils._state import PodRecord
    rec = PodRecord(params['namespace'], params['name'], params.get('state_root') or _defaults.STATE_ROOT)
    sect = dict(rec.section('cgroups') or {})
    container = params.get('container')
    present = (params.get('state') or 'present') == 'present'
    if container:
        conts = dict(sect.get('containers') or {})
        if present:
            conts[container] = mgr.record_value(res)
        else:
            conts.pop(container, None)
        sect['containers'] = conts
        if not conts:
            sect.pop('containers')
    elif present:
        sect.update(mgr.record_value(res))
    else:
        sect = {}
    value = sect or None
    if rec.section('cgroups') == value:
        return False
    if not check_mode:
        rec.update('cgroups', value, uid=params.get('pod_uid'))
    return True
