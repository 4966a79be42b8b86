"""A throwaway "node" for the reliability tests, and ways to drive pods on it.

Node: a network namespace (`ip netns add`), every state root in a tmp dir, cgroups under a
uniquely named parent, and a marker in the environment of everything started for it
(BAREPOD_RELNODE=<id>: the modules inherit it from ansible-playbook and the pause processes
from the modules), so its processes can be found and counted by pid, never by name.

- node.playbook(...) runs playbooks/pod_up.yml / pod_down.yml under `nsenter --net=<node>`,
  optionally with $BAREPOD_FAILPOINTS, and returns (rc, stats, result, failed task messages).
- node.snapshot() counts everything a pod leaves on a node: processes, mounts, netns files,
  links, IPAM files, iptables chains, cgroups, pod records, rootfs and log dirs.
- node.cleanup() removes whatever is left, by pid and path, even after a failed test.
- PodDriver mirrors roles/pod (same modules' managers, same order, same parameters) in one
  Python process, for the soak and the parallel bring-ups: no ansible-playbook start-up cost.
"""
import glob
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE_PLAYBOOK = os.path.join(REPO, '.venv', 'bin', 'ansible-playbook')
CGROUP_ROOT = '/sys/fs/cgroup'
MARKER = 'BAREPOD_RELNODE'
CONTROLLERS = ('cpu', 'cpuacct', 'cpuset', 'memory', 'pids')


def collections_root():
    sys_mod = sys.modules.get('conftest')
    root = getattr(sys_mod, 'COLLECTIONS_ROOT', None)
    if root:
        return root
    return os.path.join(REPO, '.venv', 'collections')


def _proc_environ_has(pid, needle):
    try:
        with open('/proc/%s/environ' % pid, 'rb') as f:
            return needle in f.read()
    except OSError:
        return False


def _readlink(p):
    try:
        return os.readlink(p)
    except OSError:
        return None


class Node(object):
    def __init__(self, tmp):
        self.tmp = tmp
        self.id = uuid.uuid4().hex[:8]
        self.netns = 'bpr' + self.id
        self.cg_parent = 'barepod-rel-' + self.id
        subprocess.run(['ip', 'netns', 'add', self.netns], check=True)
        self.hostdir = os.path.join(tmp, 'hostdata')
        os.makedirs(self.hostdir)
        self.vars = dict(
            pod_state_root=os.path.join(tmp, 'state'), pod_netns_dir=os.path.join(tmp, 'netns'),
            pod_rootfs_root=os.path.join(tmp, 'rootfs'), pod_log_root=os.path.join(tmp, 'logs'),
            pod_cni_data_dir=os.path.join(tmp, 'cni'), pod_cgroup_parent=self.cg_parent + '/kubepods',
            pod_grace_period=1, pod_host_ip='192.0.2.10', pod_allowed_host_paths=[self.hostdir])
        for k in ('pod_state_root', 'pod_netns_dir', 'pod_rootfs_root', 'pod_log_root', 'pod_cni_data_dir'):
            os.makedirs(self.vars[k], exist_ok=True)
        # as `ip netns add` leaves /run/netns: a shared bind mount of itself (the sandbox
        # module does the same on first use; done here so the baseline already has it)
        subprocess.run(['mount', '--bind', self.vars['pod_netns_dir'], self.vars['pod_netns_dir']], check=True)
        subprocess.run(['mount', '--make-shared', self.vars['pod_netns_dir']], check=True)
        self.ipam_dir = os.path.join(self.vars['pod_cni_data_dir'], 'barepod')
        self.files = []

    # ------------------------------------------------------------------ manifests
    def manifest_dict(self, name='core-k8s', memory='200Mi'):
        with open(os.path.join(REPO, 'examples', 'demo-pod.yaml')) as f:
            m = yaml.safe_load(f)
        m['metadata']['name'] = name
        m['spec']['volumes'][0]['hostPath']['path'] = self.hostdir
        m['spec']['containers'][0]['resources']['limits']['memory'] = memory
        return m

    def manifest(self, name='core-k8s', memory='200Mi'):
        m = self.manifest_dict(name, memory)
        path = os.path.join(self.tmp, name + '.yaml')
        with open(path, 'w') as f:
            yaml.safe_dump(m, f)
        if path not in self.files:
            self.files.append(path)
        return path

    # ------------------------------------------------------------------ ansible-playbook
    def env(self, failpoints=None):
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_STDOUT_CALLBACK='json',
                   ANSIBLE_COLLECTIONS_PATH=collections_root(), ANSIBLE_NOCOLOR='1')
        env[MARKER] = self.id
        env.pop('BAREPOD_FAILPOINTS', None)
        if failpoints:
            env['BAREPOD_FAILPOINTS'] = failpoints
        return env

    def playbook(self, name, files, check=False, failpoints=None, diff=False, timeout=300, **extra):
        """-> (rc, stats, result, [failure messages])"""
        v = dict(self.vars, barepod_pod_files=list(files))
        v.update(extra)
        varsfile = os.path.join(self.tmp, 'vars-%s.json' % uuid.uuid4().hex[:6])
        with open(varsfile, 'w') as f:
            json.dump(v, f)
        cmd = ['nsenter', '--net=/run/netns/' + self.netns, ANSIBLE_PLAYBOOK, os.path.join(REPO, 'playbooks', name),
               '-e', '@' + varsfile]
        if check:
            cmd.append('--check')
        if diff:
            cmd.append('--diff')
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env(failpoints),
                           timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        os.unlink(varsfile)
        out = p.stdout.decode(errors='replace')
        try:
            res = json.loads(out[out.index('{'):])
        except ValueError:
            raise AssertionError('no JSON from ansible-playbook (rc=%d)\n%s\n%s'
                                 % (p.returncode, out[-3000:], p.stderr.decode(errors='replace')[-3000:]))
        stats = res['stats'].get('localhost', {})
        failures = []
        for play in res['plays']:
            for t in play['tasks']:
                h = t['hosts'].get('localhost', {})
                if h.get('failed'):
                    failures.append(dict(task=t['task']['name'], msg=h.get('msg'), rc=h.get('rc'),
                                         module_stderr=(h.get('module_stderr') or '')[-500:]))
        return p.returncode, stats, res, failures

    def up(self, files, **kw):
        rc, stats, res, failures = self.playbook('pod_up.yml', files, **kw)
        assert rc == 0, 'pod_up failed: %s' % json.dumps(failures, indent=1)[:4000]
        return stats, res

    def down(self, files, **kw):
        rc, stats, res, failures = self.playbook('pod_down.yml', files, **kw)
        assert rc == 0, 'pod_down failed: %s' % json.dumps(failures, indent=1)[:4000]
        return stats, res

    # ------------------------------------------------------------------ observation
    def records(self):
        out = []
        for p in sorted(glob.glob(os.path.join(self.vars['pod_state_root'], '*', 'record.json'))):
            with open(p) as f:
                out.append(json.load(f))
        return out

    def processes(self):
        """{pid: 'pause'|'container'|'other'} of every live process started for this node.

        pause (and anything else a module started): the marker in its environment; containers
        (clean environment, own root): in a cgroup under the node's parent, or in the network
        namespace of one of the node's pause processes."""
        needle = ('%s=%s' % (MARKER, self.id)).encode()
        cg = ('/%s/' % self.cg_parent).encode()
        me = os.getpid()
        out, netns_of = {}, {}
        for d in os.listdir('/proc'):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                with open('/proc/%s/stat' % d) as f:
                    if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                        continue
                with open('/proc/%s/cgroup' % d, 'rb') as f:
                    in_cg = cg in f.read()
            except (OSError, IndexError):
                continue
            if _proc_environ_has(d, needle):
                exe = _readlink('/proc/%s/exe' % d) or ''
                out[int(d)] = 'pause' if '/pause' in exe or 'busybox' in exe else 'other'
            elif in_cg:
                out[int(d)] = 'container'
            else:
                netns_of[int(d)] = _readlink('/proc/%s/ns/net' % d)
        pause_net = set(_readlink('/proc/%d/ns/net' % p) for p, k in out.items() if k == 'pause')
        pause_net.discard(None)
        for p, n in netns_of.items():
            if n in pause_net:
                out[p] = 'container'
        return out

    def links(self):
        p = subprocess.run(['ip', '-n', self.netns, '-o', 'link'], stdout=subprocess.PIPE, check=True)
        return sorted(line.split(':')[1].strip().split('@')[0] for line in p.stdout.decode().splitlines())

    def chains(self):
        """table/chain of both backends (legacy ones prefixed legacy:)."""
        out = []
        for prefix, save in (('', 'iptables-nft-save'), ('legacy:', 'iptables-legacy-save')):
            p = subprocess.run(['ip', 'netns', 'exec', self.netns, save], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, check=True)
            table = None
            for line in p.stdout.decode().splitlines():
                if line.startswith('*'):
                    table = line[1:]
                elif line.startswith(':'):
                    out.append('%s%s/%s' % (prefix, table, line[1:].split()[0]))
        return sorted(out)

    def rules(self, table='nat', backend='nft'):
        p = subprocess.run(['ip', 'netns', 'exec', self.netns, 'iptables-%s-save' % backend, '-t', table],
                           stdout=subprocess.PIPE, check=True)
        return [line for line in p.stdout.decode().splitlines() if line.startswith('-A')]

    def mounts(self):
        with open('/proc/self/mountinfo') as f:
            return sorted(line.split()[4] for line in f if line.split()[4].startswith(self.tmp))

    def cgroups(self):
        out = []
        for ctrl in CONTROLLERS:
            base = os.path.join(CGROUP_ROOT, ctrl, self.cg_parent)
            for d, _dirs, _files in os.walk(base):
                out.append(os.path.relpath(d, CGROUP_ROOT))
        return sorted(out)

    def ipam_files(self):
        try:
            return sorted(n for n in os.listdir(self.ipam_dir) if n[0].isdigit())
        except OSError:
            return []

    def _ls(self, key):
        try:
            return sorted(os.listdir(self.vars[key]))
        except OSError:
            return []

    def snapshot(self):
        """Everything a pod can leave behind on the node, as sorted lists."""
        procs = self.processes()
        return dict(
            processes=sorted('%s:%d' % (k, p) for p, k in procs.items()),
            mounts=self.mounts(), netns=self._ls('pod_netns_dir'), links=self.links(),
            ipam=self.ipam_files(), chains=self.chains(), cgroups=self.cgroups(),
            records=self._ls('pod_state_root'), rootfs=self._ls('pod_rootfs_root'), logs=self._ls('pod_log_root'))

    def pod_cgroups(self):
        """pod<uid> cgroup dirs (any QoS class, any controller)."""
        return [c for c in self.cgroups() if os.path.basename(c).startswith('pod')]

    # ------------------------------------------------------------------ cleanup
    def cleanup(self):
        """Everything by pid and path (no playbook: links, chains and addresses go with the node
        netns and the tmp dirs)."""
        self.kill_all()
        for mp in sorted(self.mounts(), key=len, reverse=True):
            subprocess.run(['umount', '-l', mp], check=False, stderr=subprocess.DEVNULL)
        for ctrl in os.listdir(CGROUP_ROOT):
            base = os.path.join(CGROUP_ROOT, ctrl, self.cg_parent)
            if os.path.isdir(base) and not os.path.islink(base):
                for d, _dirs, _files in sorted(os.walk(base), key=lambda x: len(x[0]), reverse=True):
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass
        subprocess.run(['ip', 'netns', 'del', self.netns], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def kill_all(self):
        for _attempt in range(3):
            procs = self.processes()
            if not procs:
                return
            for pid in procs:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.2)


# ---------------------------------------------------------------------- in-process driver

def _module_spec(modname):
    """The argument_spec of one of our modules (captured from its main())."""
    mod = importlib.import_module('ansible_collections.barepod.linux.plugins.modules.' + modname)
    if hasattr(mod, 'argument_spec') and callable(mod.argument_spec):
        return mod.argument_spec()
    captured = {}

    class _Captured(Exception):
        pass

    def fake(argument_spec, **_kw):
        captured.update(argument_spec)
        raise _Captured()

    runner = importlib.import_module('ansible_collections.barepod.linux.plugins.module_utils._module')
    orig = runner.AnsibleModule
    runner.AnsibleModule = fake
    try:
        mod.main()
    except _Captured:
        pass
    finally:
        runner.AnsibleModule = orig
    return captured


_SPECS = {}


def module_params(modname, params):
    """params completed with the module's defaults, as AnsibleModule would hand them over."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    if modname not in _SPECS:
        _SPECS[modname] = _module_spec(modname)
    res = ArgumentSpecValidator(_SPECS[modname]).validate(params)
    if res.error_messages:
        raise AssertionError('%s: %s' % (modname, res.error_messages))
    return res.validated_parameters


class PodDriver(object):
    """roles/pod in Python: the same managers, in the same order, with the same parameters."""

    def __init__(self, vars_, pause_dir=None):
        self.v = vars_
        self.pause_dir = pause_dir

    def _u(self):
        from ansible_collections.barepod.linux.plugins.module_utils import _cgroups, _rootfs, _sandbox
        from ansible_collections.barepod.linux.plugins.module_utils._veth import VethNet
        from ansible_collections.barepod.linux.plugins.module_utils._podstatus import PodStatusManager
        return _rootfs, _sandbox, _cgroups, VethNet, PodStatusManager

    def _filters(self):
        return importlib.import_module('ansible_collections.barepod.linux.plugins.filter.pod')

    def up(self, manifest, check=False):
        _rootfs, _sandbox, _cgroups, VethNet, PodStatusManager = self._u()
        flt = self._filters()
        v = self.v
        pid = flt.pod_identity(manifest)
        spec = manifest['spec']
        changed = []
        base = dict(namespace=pid['namespace'], name=pid['name'], state_root=v['pod_state_root'])

        def rootfs(ips):
            for c in spec['containers']:
                src = flt.pod_container_source(c, {}, ['busybox'])
                p = module_params('chroot_rootfs', dict(
                    base, pod_uid=pid['uid'], container=c['name'], rootfs_root=v['pod_rootfs_root'],
                    busybox=src['busybox'], mounts=flt.pod_container_mounts(c, spec.get('volumes') or []),
                    allowed_host_paths=v['pod_allowed_host_paths'], hostname=pid['name'], pod_ips=ips or None))
                r = _rootfs.run(p, check_mode=check)
                changed.append(('rootfs', r['changed']))

        st = PodStatusManager(module_params('pod_status', dict(base, manifest=manifest, update=False)),
                              check_mode=check).run()
        before_ip = (st.get('status') or {}).get('podIP')
        rootfs([before_ip] if before_ip else [])
        sb_base = dict(base, uid=pid['uid'], grace_period=v['pod_grace_period'], netns_dir=v['pod_netns_dir'],
                       log_root=v['pod_log_root'])
        if self.pause_dir:
            sb_base['pause_dir'] = self.pause_dir
        sb = _sandbox.SandboxManager(module_params('ns_sandbox', dict(sb_base, containers=[], prune_containers=False)),
                                     check_mode=check).run()
        changed.append(('sandbox', sb['changed']))
        cg_base = dict(base, pod_uid=pid['uid'], containers=spec['containers'], parent=v['pod_cgroup_parent'])
        r = _cgroups.run_limit(module_params('cgroup_limit', cg_base), check_mode=check)
        changed.append(('cgroup', r['changed']))
        ctr_cg = []
        for c in spec['containers']:
            r = _cgroups.run_limit(module_params('cgroup_limit', dict(cg_base, container=c['name'])), check_mode=check)
            changed.append(('cgroup ' + c['name'], r['changed']))
            ctr_cg.append(r)
        net = VethNet(module_params('veth_net', dict(
            base, uid=pid['uid'], netns=sb['netns_path'], subnet=v.get('pod_subnet', '10.244.0.0/24'),
            data_dir=v['pod_cni_data_dir'])), check_mode=check)
        res = net.run()
        changed.append(('network', net.changed))
        if before_ip != res.get('ip'):
            rootfs([res['ip']])
        ctrs = flt.pod_container_specs(manifest, v['pod_rootfs_root'], pid['uid'], ctr_cg)
        r = _sandbox.SandboxManager(module_params('ns_sandbox', dict(sb_base, containers=ctrs)), check_mode=check).run()
        changed.append(('containers', r['changed']))
        r = PodStatusManager(module_params('pod_status', dict(base, host_ip=v['pod_host_ip'], node='localhost')),
                             check_mode=check).run()
        changed.append(('status', r['changed']))
        return dict(ip=res.get('ip'), sandbox_pid=sb.get('pid'), changed=[k for k, c in changed if c])

    def down(self, manifest, gc=False):
        _rootfs, _sandbox, _cgroups, VethNet, PodStatusManager = self._u()
        flt = self._filters()
        v = self.v
        pid = flt.pod_identity(manifest)
        spec = manifest['spec']
        base = dict(namespace=pid['namespace'], name=pid['name'], state_root=v['pod_state_root'])
        changed = []
        r = _sandbox.SandboxManager(module_params('ns_sandbox', dict(
            base, uid=pid['uid'], state='absent', grace_period=v['pod_grace_period'], netns_dir=v['pod_netns_dir'],
            log_root=v['pod_log_root']))).run()
        changed.append(('sandbox', r['changed']))
        net = VethNet(module_params('veth_net', dict(
            base, uid=pid['uid'], state='absent', data_dir=v['pod_cni_data_dir'], gc=gc,
            netns=os.path.join(v['pod_netns_dir'], 'barepod-' + pid['uid'].replace('-', '')[:8]))))
        net.run()
        changed.append(('network', net.changed))
        cg_base = dict(base, pod_uid=pid['uid'], state='absent', on_processes='kill', parent=v['pod_cgroup_parent'])
        for c in spec['containers']:
            r = _cgroups.run_limit(module_params('cgroup_limit', dict(cg_base, container=c['name'])))
            changed.append(('cgroup ' + c['name'], r['changed']))
        r = _cgroups.run_limit(module_params('cgroup_limit', cg_base))
        changed.append(('cgroup', r['changed']))
        for c in spec['containers']:
            r = _rootfs.run(module_params('chroot_rootfs', dict(
                base, state='absent', pod_uid=pid['uid'], container=c['name'], rootfs_root=v['pod_rootfs_root'])))
            changed.append(('rootfs', r['changed']))
        for d in (os.path.join(v['pod_rootfs_root'], pid['uid']),
                  os.path.join(v['pod_log_root'], '%s_%s_%s' % (pid['namespace'], pid['name'], pid['uid']))):
            if os.path.exists(d):
                shutil.rmtree(d)
                changed.append(('dirs', True))
        r = PodStatusManager(module_params('pod_status', dict(base, state='absent'))).run()
        changed.append(('record', r['changed']))
        return dict(changed=[k for k, c in changed if c])


def converged_exactly_once(node, name, baseline):
    """Assert the node holds exactly one of everything for pod `name` (on top of baseline)."""
    recs = [r for r in node.records() if r.get('name') == name]
    assert len(recs) == 1, recs
    rec = recs[0]
    snap = node.snapshot()
    procs = snap['processes']
    kinds = sorted(p.split(':')[0] for p in procs)
    assert kinds == ['container', 'pause'], procs
    assert 'pause:%d' % rec['sandbox']['pid'] in procs
    new_links = sorted(set(snap['links']) - set(baseline['links']))
    assert new_links == [rec['network']['host_ifname']], snap['links']
    assert snap['ipam'] == [rec['network']['ip']], snap['ipam']
    new_chains = sorted(set(snap['chains']) - set(baseline['chains']))
    assert len(new_chains) == 1 and new_chains[0].startswith('nat/CNI-'), new_chains
    uid = rec['uid']
    pod_dirs = [c for c in snap['cgroups'] if os.path.basename(c).startswith('pod')]
    assert sorted(c.split('/')[0] for c in pod_dirs) == sorted(CONTROLLERS), pod_dirs
    assert all(c.endswith('pod' + uid) for c in pod_dirs), pod_dirs
    assert snap['netns'] == ['barepod-' + uid.replace('-', '')[:8]], snap['netns']
    assert snap['records'] == ['default_' + name], snap['records']
    return rec, snap


def run_module_in(node, name, args, check=False, diff=False, failpoints=None, timeout=120):
    """plugins/modules/<name>.py in a fresh interpreter inside the node's netns, as Ansible runs it.
    -> its JSON result plus _rc (a SIGKILLed module prints nothing: {'_rc': -9})."""
    payload = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    path = os.path.join(node.tmp, 'args-%s.json' % uuid.uuid4().hex[:6])
    with open(path, 'w') as f:
        json.dump({'ANSIBLE_MODULE_ARGS': payload}, f)
    env = node.env(failpoints)
    env['PYTHONPATH'] = collections_root()
    try:
        p = subprocess.run(['nsenter', '--net=/run/netns/' + node.netns, sys.executable, '-m',
                            'ansible_collections.barepod.linux.plugins.modules.' + name, path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
                           timeout=timeout, cwd='/', check=False)
    finally:
        os.unlink(path)
    out = p.stdout.decode(errors='replace')
    try:
        res = json.loads(out[out.index('{'):])
    except ValueError:
        res = {}
    res['_rc'] = p.returncode
    res['_stderr'] = p.stderr.decode(errors='replace')
    return res
