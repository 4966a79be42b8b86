# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pod sandbox manager: the pause process plus the pod's containers.

Shape (DESIGN.md): desired(params) validates and normalises everything before any change;
observe() reads the pod record and checks each recorded pid (with its start time, so a
reused pid is not mistaken for ours); plan() is pure and yields the actions; apply runs
them through Actions (the check-mode choke point).

Processes are started by a double fork: the first child (setsid) unshares or joins the
namespaces, forks the real process and exits at once, so the module never waits on it and
the process is reparented away from Ansible. Errors before exec travel back through a
close-on-exec pipe, so a failed start is reported, not silently lost.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import select
import signal
import stat
import time
import uuid

from ansible_collections.barepod.linux.plugins.module_utils import _namespaces as ns
from ansible_collections.barepod.linux.plugins.module_utils import _defaults
from ansible_collections.barepod.linux.plugins.module_utils._common import (
    Actions, BarepodError, Manager, makedirs, pid_alive, pid_starttime, result, validate_dns_label, validate_uid)
from ansible_collections.barepod.linux.plugins.module_utils._common import failpoint
from ansible_collections.barepod.linux.plugins.module_utils._paths import secure_join
from ansible_collections.barepod.linux.plugins.module_utils._pause import DEFAULT_PAUSE_DIR, pause_argv
from ansible_collections.barepod.linux.plugins.module_utils._state import (
    PodRecord, log_dir, netns_path,
    pod_key)

DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
DEFAULT_GRACE = _defaults.GRACE_PERIOD
KILL_WAIT = 10.0
SHELL_META = set(';&|<>`$\\"\'*?[](){}!#~ \t\n')
ENV_NAME_FORBIDDEN = set('=\x00')

SANDBOX_SECTION = 'sandbox'
CONTAINERS_SECTION = 'containers'


# ---------------------------------------------------------------- desired

def _check_name(field, value, label=True):
    """Names become paths and hostnames: refuse '/', '..' and shell metacharacters clearly."""
    if isinstance(value, str):
        if '/' in value or '..' in value:
            raise BarepodError('%r must not contain "/" or ".."' % (value,), field=field, value=value)
        bad = sorted(set(value) & SHELL_META)
        if bad:
            raise BarepodError('%r contains shell metacharacters %s' % (value, ''.join(bad)),
                               field=field, value=value)
    if label:
        validate_dns_label(field, value)
    return value


def default_uid(namespace, name):
    """A stable uid for a pod declared without one (so absent finds the same netns)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, 'barepod://%s/%s' % (namespace, name)))


def pod_hostname(name):
    """The pod's hostname as kubelet derives it: the pod name, at most 63 characters."""
    h = name[:63].rstrip('-.')
    return h


def check_rootfs(field, path, pending=False):
    """The container's rootfs, a real directory. pending (check mode): a rootfs that does not
    exist yet is one an earlier step (chroot_rootfs) would create; only its path is checked."""
    if not isinstance(path, str) or not path.startswith('/'):
        raise BarepodError('must be an absolute path, got %r' % (path,), field=field, value=path)
    if '\x00' in path or '..' in path.split('/'):
        raise BarepodError('%r contains ".." or NUL' % (path,), field=field, value=path)
    path = os.path.normpath(path)
    if path == '/':
        raise BarepodError('the host root "/" cannot be a container rootfs', field=field, value=path)
    if pending and not os.path.lexists(path):
        return path
    try:
        st = os.lstat(path)
    except OSError as e:
        raise BarepodError('%s does not exist (%s)' % (path, e.strerror), field=field, value=path)
    if stat.S_ISLNK(st.st_mode):
        raise BarepodError('%s is a symlink; give the real directory' % path, field=field, value=path)
    if not stat.S_ISDIR(st.st_mode):
        raise BarepodError('%s is not a directory' % path, field=field, value=path)
    real = os.path.realpath(path)
    if real != path:
        raise BarepodError('%s resolves to %s through a symlinked parent; give the real path'
                           % (path, real), field=field, value=path)
    return path


def resolve_command(field, rootfs, argv0, path_env, working_dir='/'):
    """Find argv0 inside rootfs as execve would after pivot_root; return its in-rootfs path."""
    if not argv0:
        raise BarepodError('is empty', field=field, value=argv0)
    if '/' in argv0:
        candidates = [argv0 if argv0.startswith('/') else os.path.join(working_dir, argv0)]
    else:
        candidates = [os.path.join(d or '.', argv0) for d in path_env.split(':')]
        candidates = [c if c.startswith('/') else os.path.join(working_dir, c) for c in candidates]
    for c in candidates:
        host = secure_join(rootfs, c, field=field)
        try:
            st = os.stat(host)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return os.path.normpath(c)
    raise BarepodError('%r not found as an executable in the rootfs %s (searched %s)'
                       % (argv0, rootfs, ', '.join(candidates)), field=field, value=argv0)


def _int_id(field, value):
    if value is None:
        return None
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise BarepodError('must be an integer, got %r' % (value,), field=field, value=value)
    if v < 0 or v > 0xFFFFFFFE:
        raise BarepodError('%d is out of range' % v, field=field, value=value)
    return v


def _env_list(field, env):
    out = []
    seen = {}
    for i, item in enumerate(env or []):
        f = '%s[%d]' % (field, i)
        if not isinstance(item, dict) or 'name' not in item:
            raise BarepodError('must be a dict with name and value', field=f, value=item)
        name = item['name']
        if not isinstance(name, str) or not name or set(name) & ENV_NAME_FORBIDDEN:
            raise BarepodError('invalid environment variable name %r' % (name,), field=f + '.name', value=name)
        value = item.get('value')
        value = '' if value is None else str(value)
        if '\x00' in value:
            raise BarepodError('contains a NUL byte', field=f + '.value', value=value)
        if name in seen:
            out[seen[name]] = (name, value)
        else:
            seen[name] = len(out)
            out.append((name, value))
    return out


def _get(d, *keys):
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def desired_container(i, c, hostname, share_pid, pending=False):
    """pending (check mode): the rootfs and cgroups may be ones earlier steps would create; those
    that do not exist yet are planned against instead of refused (their contents are not known)."""
    field = 'containers[%d]' % i
    if not isinstance(c, dict):
        raise BarepodError('must be a dict', field=field, value=c)
    name = _check_name(field + '.name', c.get('name'))
    rootfs = check_rootfs(field + '.rootfs', c.get('rootfs'), pending)
    command = list(c.get('command') or [])
    args = list(c.get('args') or [])
    argv = [str(a) for a in command + args]
    if not argv:
        raise BarepodError('a command (or args) is required: there is no image entrypoint to fall back on',
                           field=field + '.command', value=None)
    env = _env_list(field + '.env', c.get('env'))
    wd = _get(c, 'working_dir', 'workingDir') or '/'
    if not isinstance(wd, str) or not wd.startswith('/') or '\x00' in wd:
        raise BarepodError('must be an absolute path, got %r' % (wd,), field=field + '.working_dir', value=wd)
    wd = os.path.normpath(wd)
    if wd == '/proc' or wd.startswith('/proc/'):
        # CVE-2024-21626: /proc/self/fd/N names whatever the runtime holds open, possibly a
        # host directory; the container's cwd must be inside its root
        raise BarepodError('%r is under /proc; a working directory must be a directory of the rootfs'
                           % (wd,), field=field + '.working_dir', value=wd)
    sc = _get(c, 'security_context', 'securityContext') or {}
    run_as_user = _int_id(field + '.security_context.run_as_user', _get(sc, 'run_as_user', 'runAsUser'))
    run_as_group = _int_id(field + '.security_context.run_as_group', _get(sc, 'run_as_group', 'runAsGroup'))
    uid = run_as_user if run_as_user is not None else 0
    gid = run_as_group if run_as_group is not None else (0 if run_as_user is None else run_as_user)
    envmap = dict(env)
    full_env = [('PATH', DEFAULT_PATH), ('HOSTNAME', hostname)]
    if uid == 0:
        full_env.append(('HOME', '/root'))
    else:
        full_env.append(('HOME', '/'))
    full_env = [(k, v) for k, v in full_env if k not in envmap] + env
    path_env = dict(full_env).get('PATH', DEFAULT_PATH)
    if pending and not os.path.lexists(rootfs):
        exe = argv[0]  # resolved in the rootfs once it exists (the real run)
    else:
        exe = resolve_command(field + '.command', rootfs, argv[0], path_env, wd)
    cgroups = []
    for j, cg in enumerate(c.get('cgroups') or []):
        cf = '%s.cgroups[%d]' % (field, j)
        if not isinstance(cg, str) or not cg.startswith('/') or '..' in cg.split('/') or '\x00' in cg:
            raise BarepodError('must be an absolute cgroup directory without "..", got %r' % (cg,), field=cf, value=cg)
        if not os.path.isfile(os.path.join(cg, 'cgroup.procs')) and not (pending and not os.path.lexists(cg)):
            raise BarepodError('%s is not a cgroup directory (no cgroup.procs)' % cg, field=cf, value=cg)
        cgroups.append(os.path.normpath(cg))
    spec = dict(name=name, rootfs=rootfs, argv=argv, exe=exe, cgroups=cgroups,
                env=['%s=%s' % kv for kv in full_env], working_dir=wd, uid=uid, gid=gid,
                share_pid=bool(share_pid),
                capabilities=list(ns.DEFAULT_CAPABILITIES),
                masked_paths=list(ns.DEFAULT_MASKED_PATHS),
                readonly_paths=list(ns.DEFAULT_READONLY_PATHS))
    spec['spec_hash'] = spec_hash(spec)
    return spec


def spec_hash(spec):
    body = dict((k, v) for k, v in spec.items() if k != 'spec_hash')
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def desired(params, pending=False):
    """Validate and normalise module parameters; raises BarepodError before any change.
    pending: check mode, where the containers' rootfs and cgroups may not exist yet."""
    namespace = params.get('namespace') or 'default'
    name = params.get('name')
    _check_name('namespace', namespace)
    _check_name('name', name, label=False)
    pod_key(namespace, name)  # DNS rules for namespace (label) and name (subdomain)
    state = params.get('state') or 'present'
    if state not in ('present', 'absent', 'restarted'):
        raise BarepodError('must be one of present, absent, restarted; got %r' % (state,),
                           field='state', value=state)
    uid = params.get('pod_uid')
    if uid is not None:
        validate_uid('pod_uid', uid)
    namespaces = ns.normalise_namespaces('namespaces', params.get('namespaces'))
    hostname = params.get('hostname') or pod_hostname(name)
    if params.get('hostname'):
        validate_dns_label('hostname', hostname)
    share_pid = bool(params.get('share_process_namespace'))
    grace = params.get('grace_period')
    grace = DEFAULT_GRACE if grace is None else grace
    try:
        grace = float(grace)
    except (TypeError, ValueError):
        raise BarepodError('must be a number of seconds, got %r' % (grace,), field='grace_period', value=grace)
    if grace < 0:
        raise BarepodError('must not be negative', field='grace_period', value=grace)
    pause = params.get('pause') or 'auto'
    if pause not in ('auto', 'c', 'busybox'):
        raise BarepodError('must be one of auto, c, busybox; got %r' % (pause,), field='pause', value=pause)
    d = dict(namespace=namespace, name=name, state=state, uid=uid, namespaces=namespaces,
             hostname=hostname, share_pid=share_pid, grace_period=grace, pause=pause,
             state_root=params.get('state_root') or _defaults.STATE_ROOT,
             netns_dir=params.get('netns_dir') or _defaults.NETNS_DIR,
             log_root=params.get('log_root') or _defaults.LOG_ROOT,
             pause_dir=params.get('pause_dir') or DEFAULT_PAUSE_DIR,
             prune=params.get('prune_containers', True) is not False,
             containers=[])
    if share_pid and 'pid' not in namespaces:
        raise BarepodError('share_process_namespace needs the "pid" namespace in the sandbox',
                           field='share_process_namespace', value=True)
    if state == 'absent':
        return d
    seen = set()
    for i, c in enumerate(params.get('containers') or []):
        spec = desired_container(i, c, hostname, share_pid, pending)
        if spec['name'] in seen:
            raise BarepodError('duplicate container name %r' % spec['name'],
                               field='containers[%d].name' % i, value=spec['name'])
        seen.add(spec['name'])
        d['containers'].append(spec)
    d['sandbox_hash'] = spec_hash(dict(namespaces=namespaces, hostname=hostname, share_pid=share_pid))
    return d


# ---------------------------------------------------------------- observe

def _alive(entry):
    return bool(entry) and pid_alive(entry.get('pid'), entry.get('starttime'))


def observe(d):
    rec = PodRecord(d['namespace'], d['name'], d['state_root'])
    data = rec.load()
    uid = d['uid'] or data.get('uid') or default_uid(d['namespace'], d['name'])
    if d['uid'] and data.get('uid') not in (None, d['uid']):
        raise BarepodError('pod %s/%s already exists with uid %s, not %s'
                           % (d['namespace'], d['name'], data.get('uid'), d['uid']), field='pod_uid', value=d['uid'])
    sb = data.get(SANDBOX_SECTION) or {}
    ctrs = data.get(CONTAINERS_SECTION) or {}
    nspath = sb.get('netns_path') or netns_path(uid, d['netns_dir'])
    actual = dict(uid=uid, record=rec, record_exists=rec.exists(), sandbox=sb, containers=ctrs,
                  sandbox_alive=_alive(sb), netns_path=nspath,
                  netns_exists=os.path.lexists(nspath),
                  alive=dict((n, _alive(c)) for n, c in ctrs.items()))
    actual['netns_ok'] = False
    if actual['sandbox_alive'] and 'net' in sb.get('namespaces', []):
        try:
            actual['netns_ok'] = os.stat(nspath).st_ino == ns.ns_inode(sb['pid'], 'net')
        except OSError:
            actual['netns_ok'] = False
    # a sandbox whose module died before it was recorded (kill -9 between start and record
    # write) still holds the pod's netns bind mount: find it there, or it would leak
    actual['orphans'] = netns_holders(nspath) if actual['netns_exists'] and not actual['netns_ok'] else []
    # ... or, killed before the bind mount, by the pod's uid in its environment
    if not actual['sandbox_alive']:
        have = set(o['pid'] for o in actual['orphans'])
        actual['orphans'] += [o for o in marked_sandboxes(uid) if o['pid'] not in have]
    return actual


def marked_sandboxes(uid, proc_root='/proc'):
    """[{pid, starttime}] of the live processes whose environment carries SANDBOX_ENV=uid (only
    pause processes this module started for the pod carry it)."""
    needle = ('\0%s=%s\0' % (SANDBOX_ENV, uid)).encode()
    out = []
    me = os.getpid()
    for d in os.listdir(proc_root):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(os.path.join(proc_root, d, 'environ'), 'rb') as f:
                if needle not in b'\0' + f.read():
                    continue
            out.append(dict(pid=int(d), starttime=pid_starttime(int(d))))
        except (OSError, IndexError, ValueError):
            continue
    return out


def netns_holders(path, proc_root='/proc'):
    """[{pid, starttime}] of the processes in the network namespace bind-mounted at path."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    want = (st.st_dev, st.st_ino)
    out = []
    for d in os.listdir(proc_root):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            pst = os.stat(os.path.join(proc_root, d, 'ns', 'net'))
            if (pst.st_dev, pst.st_ino) == want:
                out.append(dict(pid=int(d), starttime=pid_starttime(int(d))))
        except (OSError, IndexError, ValueError):
            continue
    return out


# ---------------------------------------------------------------- plan (pure)

def plan(actual, d):
    """-> list of (action, target, details) tuples. No I/O."""
    steps = []
    state = d['state']
    sb_alive = actual['sandbox_alive']
    alive = actual['alive']
    recorded = actual['containers']
    wanted = dict((c['name'], c) for c in d['containers'])

    def stop_all():
        for n in sorted(recorded):
            if alive.get(n):
                steps.append(('stop_container', n, {'pid': recorded[n]['pid']}))
        if sb_alive:
            steps.append(('stop_sandbox', d['name'], {'pid': actual['sandbox']['pid']}))
        if actual.get('orphans'):
            steps.append(('stop_orphans', actual['netns_path'], {'pids': [o['pid'] for o in actual['orphans']]}))
        if actual['netns_exists']:
            steps.append(('remove_netns', actual['netns_path'], {}))

    if state == 'absent':
        stop_all()
        if actual['record_exists'] and (actual['sandbox'] or recorded):
            steps.append(('remove_record', actual['record'].path, {}))
        return steps

    recreate = (state == 'restarted' or not sb_alive
                or actual['sandbox'].get('spec_hash') != d['sandbox_hash'])
    if recreate:
        stop_all()
        steps.append(('start_sandbox', d['name'], {'namespaces': d['namespaces'], 'hostname': d['hostname']}))
        for n in sorted(recorded):
            if n not in wanted and d.get('prune', True):
                steps.append(('forget_container', n, {}))
        for c in d['containers']:
            prev = recorded.get(c['name'])
            rc = prev.get('restart_count', 0) + 1 if prev else 0
            steps.append(('start_container', c['name'], {'restart_count': rc, 'spec_hash': c['spec_hash']}))
        return steps

    if 'net' in d['namespaces'] and not actual['netns_ok']:
        steps.append(('bind_netns', actual['netns_path'], {}))
    for n in sorted(recorded):
        if n not in wanted and d.get('prune', True):
            if alive.get(n):
                steps.append(('stop_container', n, {'pid': recorded[n]['pid']}))
            steps.append(('forget_container', n, {}))
    for c in d['containers']:
        prev = recorded.get(c['name'])
        if prev and alive.get(c['name']) and prev.get('spec_hash') == c['spec_hash']:
            continue
        if prev and alive.get(c['name']):
            steps.append(('stop_container', c['name'], {'pid': prev['pid'], 'reason': 'spec changed'}))
        rc = prev.get('restart_count', 0) + 1 if prev else 0
        steps.append(('start_container', c['name'], {'restart_count': rc, 'spec_hash': c['spec_hash']}))
    return steps


def view(sandbox_running, containers):
    """The before/after shape of --diff."""
    return dict(sandbox='running' if sandbox_running else 'absent',
                containers=dict((n, dict(state='running', restart_count=c.get('restart_count', 0),
                                         spec_hash=c.get('spec_hash')))
                                for n, c in sorted(containers.items())))


# ---------------------------------------------------------------- process plumbing

def _errmsg(e):
    return ('%s: %s' % (type(e).__name__, e)).encode(errors='replace')[:4000]


def _read_to_eof(fd, bufsize):
    """Everything readable from the pipe `fd` until its writers have all closed it."""
    data = b''
    while True:
        chunk = os.read(fd, bufsize)
        if not chunk:
            return data
        data += chunk


def spawn(prepare, child):
    """Double fork. prepare() runs in the first child (after setsid) and may unshare/setns;
    child() runs in the grandchild and must exec. Returns the grandchild's pid.

    Raises BarepodError with the child's message when anything fails before exec."""
    ns.libc()  # load libc once here, not in every child
    r_pid, w_pid = os.pipe2(os.O_CLOEXEC)
    r_err, w_err = os.pipe2(os.O_CLOEXEC)
    pid1 = os.fork()
    if pid1 == 0:  # first child
        code = 126
        try:
            os.close(r_pid)
            os.close(r_err)
            os.setsid()
            prepare()
            pid2 = os.fork()
            if pid2 == 0:  # grandchild: the long-lived process
                try:
                    os.close(w_pid)
                    child()
                    raise OSError('child returned without exec')
                except BaseException as e:  # noqa: BLE001 - report everything to the parent
                    try:
                        os.write(w_err, _errmsg(e))
                    finally:
                        os._exit(127)
            os.write(w_pid, str(pid2).encode())
            code = 0
        except BaseException as e:  # noqa: BLE001
            try:
                os.write(w_err, _errmsg(e))
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(w_pid)
    os.close(w_err)
    try:
        os.waitpid(pid1, 0)
        data = _read_to_eof(r_pid, 64)
        err = _read_to_eof(r_err, 4096)
    finally:
        os.close(r_pid)
        os.close(r_err)
    if err:
        raise BarepodError('starting the process failed: %s' % err.decode(errors='replace'))
    if not data:
        raise BarepodError('starting the process failed: no pid reported')
    return int(data)


def _stdio_devnull():
    fd = os.open('/dev/null', os.O_RDWR)
    for i in (0, 1, 2):
        os.dup2(fd, i)
    if fd > 2:
        os.close(fd)


# In the pause process's environment: the pod's uid, so a pause whose start was never recorded
# (the module killed between starting it and binding its netns) can still be found and stopped.
SANDBOX_ENV = 'BAREPOD_SANDBOX'


def start_sandbox(d, argv, uid=None):
    flags = ns.clone_flags(d['namespaces'])
    env = dict(os.environ)
    if uid:
        env[SANDBOX_ENV] = uid

    def prepare():
        ns.unshare(flags)
        if 'mnt' in d['namespaces']:
            # slave: the host's unmounts (a netns bind mount removed) propagate in, nothing leaks out
            ns.mount(None, '/', None, ns.MS_REC | ns.MS_SLAVE)
        if 'uts' in d['namespaces']:
            ns.sethostname(d['hostname'])

    def child():
        os.chdir('/')
        _stdio_devnull()
        ns.close_range_cloexec(3)
        os.execve(argv[0], argv, env)

    return spawn(prepare, child)


def _ensure_netns_dir(netns_dir):
    """As `ip netns add` does: the directory is a shared mount, so netns bind mounts made
    here propagate into (and their removal out of) mount namespaces created later."""
    makedirs(netns_dir, 0o755)
    try:
        ns.mount(None, netns_dir, None, ns.MS_SHARED | ns.MS_REC)
    except OSError:
        ns.mount(netns_dir, netns_dir, None, ns.MS_BIND | ns.MS_REC)
        ns.mount(None, netns_dir, None, ns.MS_SHARED | ns.MS_REC)


def bind_netns(pid, path):
    _ensure_netns_dir(os.path.dirname(path))
    if os.path.lexists(path):
        remove_netns(path)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
    os.close(fd)
    try:
        ns.mount('/proc/%d/ns/net' % pid, path, None, ns.MS_BIND)
    except OSError:
        os.unlink(path)
        raise


def remove_netns(path):
    """Unmount (lazily: a process may still hold it) and delete; True when anything existed."""
    found = False
    tries = 8  # stacked mounts
    while tries:
        tries -= 1
        try:
            ns.umount2(path, ns.MNT_DETACH)
            found = True
        except OSError:
            break
    try:
        os.unlink(path)
        found = True
    except OSError:
        pass
    return found


def _setup_dev(rootfs):
    dev = secure_join(rootfs, '/dev')
    makedirs(dev, 0o755)
    mps = ns.mount_points()
    if dev in mps:
        return  # chroot_rootfs (or the image) already provides /dev
    shm_fd = None
    if os.path.join(dev, 'shm') in mps:
        shm_fd = os.open(os.path.join(dev, 'shm'), os.O_PATH | os.O_DIRECTORY)
    ns.mount('tmpfs', dev, 'tmpfs', ns.MS_NOSUID, 'mode=755,size=65536k')
    for name, major, minor, mode in ns.DEFAULT_DEVICES:
        p = os.path.join(dev, name)
        os.mknod(p, mode | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(p, mode)
    for name, target in ns.DEFAULT_DEV_SYMLINKS:
        os.symlink(target, os.path.join(dev, name))
    pts = os.path.join(dev, 'pts')
    os.mkdir(pts, 0o755)
    ns.mount('devpts', pts, 'devpts', ns.MS_NOSUID | ns.MS_NOEXEC, 'newinstance,ptmxmode=0666,mode=0620')
    shm = os.path.join(dev, 'shm')
    os.mkdir(shm, 0o1777)
    if shm_fd is not None:
        ns.mount('/proc/self/fd/%d' % shm_fd, shm, None, ns.MS_BIND | ns.MS_REC)
        os.close(shm_fd)
    else:
        ns.mount('shm', shm, 'tmpfs', ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC, 'mode=1777,size=65536k')
    os.mkdir(os.path.join(dev, 'mqueue'), 0o755)


def _mask_paths(masked, readonly):
    for p in masked:
        try:
            st = os.stat(p)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            ns.mount('tmpfs', p, 'tmpfs', ns.MS_RDONLY)
        else:
            ns.mount('/dev/null', p, None, ns.MS_BIND)
    for p in readonly:
        if not os.path.exists(p):
            continue
        ns.mount(p, p, None, ns.MS_BIND | ns.MS_REC)
        ns.mount(p, p, None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_REC)


def _check_cwd_inside(wd):
    """After chdir(working_dir) in the new root: a symlink in the rootfs to /proc/self/fd/N can
    land on a directory outside the root that an inherited fd still holds (CVE-2024-21626);
    getcwd() then finds no path from the new "/" (ENOENT, or "(unreachable)")."""
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    if not cwd or not cwd.startswith('/'):
        raise OSError(errno.EPERM, 'working_dir %s resolves outside the container root' % wd)


def container_child(spec, logfd):
    """Runs in the container's first process (new mount ns; pid ns already set): build the
    root, pivot into it, drop privileges and exec. Never returns."""
    rootfs = spec['rootfs']
    ns.mount(None, '/', None, ns.MS_REC | ns.MS_SLAVE)
    ns.mount(rootfs, rootfs, None, ns.MS_BIND | ns.MS_REC)
    proc = secure_join(rootfs, '/proc')
    makedirs(proc, 0o555)
    ns.mount('proc', proc, 'proc', ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)
    sys_dir = secure_join(rootfs, '/sys')
    if os.path.isdir(sys_dir) and sys_dir not in ns.mount_points():
        ns.mount('sysfs', sys_dir, 'sysfs', ns.MS_RDONLY | ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)
    _setup_dev(rootfs)
    os.chdir(rootfs)
    ns.pivot_root('.', '.')
    ns.umount2('.', ns.MNT_DETACH)
    os.chdir('/')
    _mask_paths(spec['masked_paths'], spec['readonly_paths'])
    wd = spec['working_dir']
    try:
        if not os.path.isdir(wd):
            os.makedirs(wd, 0o755)
        os.chdir(wd)
    except OSError as e:
        raise OSError(e.errno, 'working_dir %s: %s' % (wd, e.strerror))
    _check_cwd_inside(wd)
    keep = ns.cap_mask(spec['capabilities'])
    ns.drop_bounding_set(keep)
    uid, gid = spec['uid'], spec['gid']
    if uid != 0 or gid != 0:
        ns.prctl(ns.PR_SET_KEEPCAPS, 1)
    os.setgroups([gid] if gid else [])
    os.setgid(gid)
    os.setuid(uid)
    ns.capset(keep, keep, 0)
    ns.prctl(ns.PR_SET_NO_NEW_PRIVS, 1)
    nullfd = os.open('/dev/null', os.O_RDONLY)
    os.dup2(nullfd, 0)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    ns.close_range_cloexec(3)
    env = dict(e.split('=', 1) for e in spec['env'])
    os.execve(spec['exe'], spec['argv'], env)


def start_container(spec, sandbox_pid, sandbox_namespaces, log_path):
    makedirs(os.path.dirname(log_path), 0o755)
    logfd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        def prepare():
            fds = []
            try:
                for n in ns.JOINED_NAMESPACES:
                    if n in sandbox_namespaces:
                        fds.append(os.open('/proc/%d/ns/%s' % (sandbox_pid, n), os.O_RDONLY | os.O_CLOEXEC))
                if spec['share_pid']:
                    fds.append(os.open('/proc/%d/ns/pid' % sandbox_pid, os.O_RDONLY | os.O_CLOEXEC))
                for fd in fds:
                    ns.setns(fd, 0)
            finally:
                for fd in fds:
                    os.close(fd)
            # join the container's cgroups first: the process forked next (the container) starts
            # inside its limits, as runc places the init process before exec ('0' = the writer)
            for cg in spec.get('cgroups') or []:
                with open(os.path.join(cg, 'cgroup.procs'), 'w') as f:
                    f.write('0')
            flags = ns.CLONE_NEWNS
            if not spec['share_pid']:
                flags |= ns.CLONE_NEWPID
            ns.unshare(flags)

        return spawn(prepare, lambda: container_child(spec, logfd))
    finally:
        os.close(logfd)


def signal_pid(pid, sig):
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _open_pidfds(entries):
    """pidfds of the live (pid, starttime) entries: signals and waits cannot hit a reused pid."""
    fds = []
    for e in entries:
        if not _alive(e):
            continue
        try:
            fd = ns.pidfd_open(e['pid'])
        except OSError:
            continue
        if pid_alive(e['pid'], e.get('starttime')):  # still the same process after opening
            fds.append(fd)
        else:
            os.close(fd)
    return fds


def _wait_pidfds(fds, timeout):
    """Wait until each pidfd's process has exited (the kernel wakes us); returns those left."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    left = set(fds)
    deadline = time.monotonic() + timeout
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for event in poller.poll(remaining * 1000):
            fd = event[0]
            poller.unregister(fd)
            left.discard(fd)
    return [fd for fd in fds if fd in left]


def _pidfd_signal(fd, sig):
    try:
        ns.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass


def stop_pids(entries, grace):
    """TERM every live (pid, starttime), KILL what is left after grace seconds, and wait
    until the kernel reports them exited (they are reaped by their reaper, not by us)."""
    fds = _open_pidfds(entries)
    try:
        for fd in fds:
            _pidfd_signal(fd, signal.SIGTERM)
        left = _wait_pidfds(fds, grace)
        for fd in left:
            _pidfd_signal(fd, signal.SIGKILL)
        left = _wait_pidfds(left, KILL_WAIT)
        if left:
            raise BarepodError('%d process(es) of %s did not exit after SIGKILL'
                               % (len(left), [e.get('pid') for e in entries]))
    finally:
        for fd in fds:
            os.close(fd)


def _bind_recorded_netns(state, path):
    bind_netns(state['sandbox']['pid'], path)


def rss_kib(pid):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


# ---------------------------------------------------------------- manager

class SandboxManager(Manager):
    """ns_sandbox: the pause process holding the pod's namespaces, and its containers."""

    def __init__(self, params, check_mode=False, diff=False):
        super().__init__(params, check_mode, diff)
        self.d = desired(params, pending=check_mode)
        self.pause = None

    def run(self):
        d = self.d
        actual = observe(d)
        uid = actual['uid']
        steps = plan(actual, d)
        actions = Actions(self.check_mode)
        rec = actual['record']
        sandbox = dict(actual['sandbox'])
        containers = dict((n, dict(c)) for n, c in actual['containers'].items())
        wanted = dict((c['name'], c) for c in d['containers'])
        nspath = netns_path(uid, d['netns_dir']) if d['state'] != 'absent' else actual['netns_path']
        state = dict(sandbox=sandbox, containers=containers)

        for action, target, details in steps:
            fn = None
            if action == 'stop_container':
                fn = functools.partial(stop_pids, [containers.get(target)], d['grace_period'])
            elif action == 'stop_sandbox':
                fn = functools.partial(stop_pids, [sandbox], d['grace_period'])
            elif action == 'stop_orphans':
                fn = functools.partial(stop_pids, actual['orphans'], 0)
            elif action == 'remove_netns':
                fn = functools.partial(remove_netns, target)
            elif action == 'remove_record':
                fn = self._remove_record(rec)
            elif action == 'start_sandbox':
                fn = self._start_sandbox(state, nspath, uid)
            elif action == 'bind_netns':
                fn = functools.partial(_bind_recorded_netns, state, target)
            elif action == 'forget_container':
                fn = functools.partial(state['containers'].pop, target, None)
            elif action == 'start_container':
                fn = self._start_container(state, wanted[target], details['restart_count'], uid)
            actions.add(action, target, fn, **details)

        running_before = dict((n, c) for n, c in actual['containers'].items() if actual['alive'].get(n))
        before = view(actual['sandbox_alive'], running_before)
        if d['state'] == 'absent':
            after = view(False, {})
        else:
            after_c = dict((n, c) for n, c in actual['containers'].items()
                           if actual['alive'].get(n) and n in wanted)
            for action, target, details in steps:
                if action == 'start_container':
                    after_c[target] = dict(restart_count=details['restart_count'], spec_hash=details['spec_hash'])
            after = view(True, after_c)

        if not self.check_mode and any(step[0] == 'start_sandbox' for step in steps):
            # build (or find) the pause binary before anything is stopped or started
            self.pause = pause_argv(d['pause'], d['pause_dir'])
        try:
            actions.run()
        finally:
            if not self.check_mode and d['state'] != 'absent' and actions and state['sandbox']:
                self._write_record(rec, state, uid)

        facts = dict(uid=uid, record_path=rec.record_path, netns_path=None, pid=None, sandbox={}, containers=[])
        if d['state'] != 'absent':
            sb = state['sandbox']
            facts['netns_path'] = sb.get('netns_path', nspath if 'net' in d['namespaces'] else None)
            if not self.check_mode or not actions:
                facts['pid'] = sb.get('pid')
                facts['sandbox'] = dict(sb, rss_kib=rss_kib(sb['pid']) if sb.get('pid') else None)
                facts['containers'] = [dict(state['containers'][c['name']], name=c['name'])
                                       for c in d['containers'] if c['name'] in state['containers']]
        return result(actions, actions.planned, dict(before=before, after=after), **facts)

    # -- action bodies (closures run only outside check mode)

    def _remove_record(self, rec):
        def fn():
            rec.update(SANDBOX_SECTION, None)
            rec.update(CONTAINERS_SECTION, None)
            data = rec.load()
            if not set(data) - {'uid', 'namespace', 'name'}:
                rec.remove()
        return fn

    def _start_sandbox(self, state, nspath, uid):
        d = self.d

        def fn():
            impl, argv = self.pause
            pid = start_sandbox(d, argv, uid)
            try:
                failpoint('sandbox-before-netns')
                st = pid_starttime(pid)
                if 'net' in d['namespaces']:
                    bind_netns(pid, nspath)
            except BaseException:
                stop_pids([dict(pid=pid)], 0)
                raise
            state['sandbox'] = dict(
                pid=pid, starttime=st, hostname=d['hostname'], namespaces=d['namespaces'],
                ns_inodes=ns.ns_inodes(pid), pause=impl, pause_argv=argv, spec_hash=d['sandbox_hash'],
                netns_path=nspath if 'net' in d['namespaces'] else None, started_at=_now())
            failpoint('sandbox-before-record')
            for c in state['containers'].values():
                c['pid'] = None  # old containers died with the old sandbox
        return fn

    def _start_container(self, state, spec, restart_count, uid):
        d = self.d

        def fn():
            sb = state['sandbox']
            path = os.path.join(log_dir(d['namespace'], d['name'], uid, spec['name'], d['log_root']),
                                '%d.log' % restart_count)
            pid = start_container(spec, sb['pid'], sb['namespaces'], path)
            try:
                st = pid_starttime(pid)
            except OSError:
                st = None  # exited already; recorded as started, restarted on the next run
            state['containers'][spec['name']] = dict(
                pid=pid, starttime=st, restart_count=restart_count, spec_hash=spec['spec_hash'],
                log_path=path, exe=spec['exe'], rootfs=spec['rootfs'],
                ns_inodes=ns.ns_inodes(pid), started_at=_now())
        return fn

    def _write_record(self, rec, state, uid):
        rec.update(SANDBOX_SECTION, state['sandbox'] or None, uid=uid)
        rec.update(CONTAINERS_SECTION, state['containers'], uid=uid)


def _now():
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
