"""The reliability tests' throwaway "node" (tests/harness.py's Node), and ways to drive pods on it.

- Node (from tests/harness.py): a network namespace, every state root in a tmp dir, cgroups under
  a uniquely named parent, a marker in the environment of everything started for it.
  node.playbook(...) runs playbooks/pod_up.yml / pod_down.yml under `nsenter --net=<node>`,
  optionally with $BAREPOD_FAILPOINTS, and returns (rc, stats, result, failed task messages);
  node.snapshot() counts everything a pod leaves on a node; node.cleanup() removes whatever is
  left, by pid and path, even after a failed test.
- PodDriver mirrors roles/pod (same modules' managers, same order, same parameters) in one
  Python process, for the soak and the parallel bring-ups: no ansible-playbook start-up cost.
"""
import importlib
import json
import os
import shutil
import subprocess
import sys
import uuid

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)  # harness, also from _worker.py (no conftest there)

from harness import ANSIBLE_PLAYBOOK, CGROUP_ROOT, CONTROLLERS, MARKER, REPO, Node, collections_root  # noqa: E402,F401


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

    def _pod(self, manifest):
        """(the pod filters, the pod's identity, the params every module call for it shares)."""
        flt = self._filters()
        pid = flt.pod_identity(manifest)
        return flt, pid, dict(namespace=pid['namespace'], name=pid['name'], state_root=self.v['pod_state_root'])

    def up(self, manifest, check=False):
        _rootfs, _sandbox, _cgroups, VethNet, PodStatusManager = self._u()
        flt, pid, base = self._pod(manifest)
        v = self.v
        spec = manifest['spec']
        changed = []

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
        flt, pid, base = self._pod(manifest)
        v = self.v
        spec = manifest['spec']
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
