"""_podconverge (the pod_converged module's logic) and the pod_module_args filter, without root.

The fast path of the pod role is only correct if pod_converged checks exactly what the role's
tasks would do: the same module specs, the same arguments, the same inputs from earlier steps.
These tests pin each of those to its source of truth.
"""
import copy
import importlib
import os

import pytest
import yaml

from conftest import REPO, run_module

from ansible_collections.barepod.linux.plugins.filter import pod as podfilter
from ansible_collections.barepod.linux.plugins.module_utils import _podconverge as pc
from ansible_collections.barepod.linux.plugins.module_utils import _specs
from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError

TASKS = os.path.join(REPO, 'roles', 'pod', 'tasks')


def demo_manifest():
    with open(os.path.join(REPO, 'examples', 'demo-pod.yaml')) as f:
        return yaml.safe_load(f)


class _Captured(Exception):
    pass


def module_spec(name, whole=False):
    """The argument_spec (whole: every keyword argument) the module's main() hands to AnsibleModule
    (through _module.run_module, where AnsibleModule is called)."""
    mod = importlib.import_module('ansible_collections.barepod.linux.plugins.modules.' + name)
    runner = importlib.import_module('ansible_collections.barepod.linux.plugins.module_utils._module')
    got = {}

    def fake(**kw):
        got.update(kw)
        raise _Captured()
    orig = runner.AnsibleModule
    runner.AnsibleModule = fake
    try:
        with pytest.raises(_Captured):
            mod.main()
    finally:
        runner.AnsibleModule = orig
    return got if whole else got['argument_spec']


@pytest.mark.parametrize('name', sorted(pc.ARGUMENT_SPECS))
def test_argument_specs_are_the_modules_own(name):
    """The module hands AnsibleModule exactly what _specs holds (spec and constraints), and
    the check validates with it."""
    got = module_spec(name, whole=True)
    assert got == dict(_specs.SPECS[name](), supports_check_mode=True)
    assert pc.ARGUMENT_SPECS[name] == got['argument_spec']


def test_every_step_has_a_module_spec():
    assert set(pc.STEPS) == set(pc.STEP_MODULES)
    assert set(pc.STEP_MODULES.values()) <= set(pc.ARGUMENT_SPECS)


SETTINGS = dict(images={}, busybox_images=['busybox'], allowed_host_paths=['/tmp'], network='barepod',
                subnet='10.244.0.0/24', bridge='cni0', mtu=1500, ip_masq=True, host_ip='192.0.2.10', node='n1',
                cgroup_parent='kubepods', cgroup_root='/sys/fs/cgroup', state_root='/run/barepod/pods',
                netns_dir='/run/netns', rootfs_root='/var/lib/barepod/rootfs', log_root='/var/log/pods',
                cni_data_dir='/var/lib/cni/networks', grace_period=30)


def test_module_args_validate_against_each_module_spec():
    a = podfilter.pod_module_args(demo_manifest(), SETTINGS)
    known = dict(record=dict(status=dict(podIP='10.244.0.5')), sandbox=dict(netns_path='/run/netns/barepod-x'),
                 network=dict(ip='10.244.0.5'),
                 cgroup_containers=[dict(paths=dict(memory='/sys/fs/cgroup/memory/kubepods/x'))])
    for step in pc.STEPS:
        args = pc.with_inputs(step, a[step], known)
        for one in args if isinstance(args, list) else [args]:
            p = pc.module_params(pc.STEP_MODULES[step], one)
            assert p  # types converted, defaults filled, no unknown keys
    assert pc.module_params('veth_net', dict(uid='u', subnet='10.0.0.0/24', mtu='1400'))['mtu'] == 1400


def test_module_params_errors_name_the_module_and_field():
    with pytest.raises(BarepodError) as e:
        pc.module_params('veth_net', dict(uid='u', nonsense=1))
    assert 'veth_net' in e.value.msg and 'nonsense' in e.value.msg


def test_module_args_follow_the_manifest_and_settings():
    m = demo_manifest()
    m['spec'].update(hostname='h1', terminationGracePeriodSeconds=5, shareProcessNamespace=True)
    a = podfilter.pod_module_args(m, SETTINGS)
    uid = a['identity']['uid']
    assert a['sandbox']['hostname'] == 'h1' and a['sandbox']['grace_period'] == 5
    assert a['sandbox']['share_process_namespace'] is True and a['sandbox']['prune_containers'] is False
    assert 'prune_containers' not in a['containers']
    assert a['rootfs'][0]['mounts'] == [dict(type='bind', source='/tmp', target='/data', read_only=False)]
    assert a['rootfs'][0]['hostname'] == 'h1' and a['rootfs'][0]['busybox'] is True
    assert a['containers']['containers'] == podfilter.pod_container_specs(m, SETTINGS['rootfs_root'], uid)
    assert a['status'] == dict(name='core-k8s', namespace='default', host_ip='192.0.2.10', node='n1',
                               state_root='/run/barepod/pods')
    # the defaults of the role stand in for missing settings
    assert podfilter.pod_module_args(demo_manifest())['network']['subnet'] == '10.244.0.0/24'


def test_containers_get_the_cgroups_the_filter_would_give():
    m = demo_manifest()
    m['spec']['containers'].append(dict(name='second', image='busybox', command=['sleep', '1']))
    a = podfilter.pod_module_args(m, SETTINGS)
    results = [dict(paths=dict(memory='/cg/memory/a', cpu='/cg/cpu,cpuacct/a', cpuacct='/cg/cpu,cpuacct/a')),
               dict(paths=dict(memory='/cg/memory/b'))]
    ours = pc.with_inputs('containers', a['containers'], dict(cgroup_containers=results))['containers']
    theirs = podfilter.pod_container_specs(m, SETTINGS['rootfs_root'], a['identity']['uid'], results)
    assert ours == theirs
    assert ours[0]['cgroups'] == ['/cg/memory/a', '/cg/cpu,cpuacct/a']


def _role_tasks():
    out = []
    for fname in ('present.yml', 'rootfs.yml'):
        with open(os.path.join(TASKS, fname)) as f:
            for t in yaml.safe_load(f):
                out.append((fname, t))
    return out


def _step_of(task):
    when = task.get('when')
    for w in when if isinstance(when, list) else [when]:
        if isinstance(w, str) and w.endswith(' in pod__check.run'):
            return w.split("'")[1]
    return None


# inputs the role takes from earlier tasks (pod_converged adds the same ones in with_inputs)
DYNAMIC = {'network': {'netns'}, 'containers': {'containers'}}


def test_role_tasks_pass_exactly_the_checked_arguments():
    """Each real module task of present.yml passes the keys pod_converged checks, from pod__args."""
    m = demo_manifest()
    m['spec'].update(hostname='h1', subdomain='s', hostAliases=[dict(ip='10.0.0.1', hostnames=['a'])])
    m['spec']['containers'][0]['image'] = 'mine:1'
    a = podfilter.pod_module_args(m, dict(SETTINGS, images={'mine:1': '/images/mine.tar'}))
    seen = set()
    for fname, task in _role_tasks():
        mod = next((k for k in task if k.startswith('barepod.linux.')), None)
        if mod is None:
            continue
        args = task[mod]
        if fname == 'rootfs.yml':
            step_args = a['rootfs'][0]
            assert set(args) - {'pod_ips'} == set(step_args), 'rootfs.yml'
            for k in step_args:
                assert 'item.%s' % k in args[k], (k, args[k])
            seen.add('rootfs')
            continue
        step = _step_of(task)
        if step is None:
            assert mod == 'barepod.linux.pod_converged'
            continue
        assert pc.STEP_MODULES[step] == mod.split('.')[-1], step
        step_args = a[step][0] if isinstance(a[step], list) else a[step]
        assert set(args) == set(step_args) | DYNAMIC.get(step, set()), step
        for k in step_args:
            if k in DYNAMIC.get(step, set()):
                continue
            ref = 'item.%s' % k if isinstance(a[step], list) else 'pod__args.%s.%s' % (step, k)
            assert ref in args[k] or "pod__args.%s['%s']" % (step, k) in args[k], (step, k, args[k])
        seen.add(step)
    # hosts runs rootfs.yml (with pod__args.hosts); every other step is a task of its own
    assert seen == set(pc.STEPS) - {'hosts'}
    with open(os.path.join(TASKS, 'present.yml')) as f:
        text = f.read()
    assert 'pod__rootfs_args: "{{ pod__args.hosts }}"' in text
    assert 'pod__rootfs_args: "{{ pod__args.rootfs }}"' in text


class FakeModules(object):
    """run_module_logic stand-in: per step, whether it would change; records the args it got."""

    def __init__(self, changing=()):
        self.changing = set(changing)
        self.calls = []

    def __call__(self, module, args, check_mode=True, iptables=None):
        assert check_mode is True
        self.calls.append((module, copy.deepcopy(args)))
        step = args.get('_step')
        res = dict(changed=step in self.changing, actions=[dict(action='x', target=step)] if step in self.changing
                   else [])
        if step == 'record':
            res['status'] = dict(podIP='10.244.0.7')
        if step == 'sandbox':
            res['netns_path'] = '/run/netns/barepod-abc'
        if step == 'cgroup_containers':
            res['paths'] = dict(memory='/cg/m/' + args['container'])
        if step == 'network':
            res['ip'] = args.get('_ip', '10.244.0.7')
        if step == 'status':
            res['status'] = dict(phase='Running')
        return res


def fake_steps(ip='10.244.0.7'):
    one = dict
    return dict(record=one(_step='record'), rootfs=[one(_step='rootfs', container='a')],
                sandbox=one(_step='sandbox'), cgroup_pod=one(_step='cgroup_pod'),
                cgroup_containers=[one(_step='cgroup_containers', container='a'),
                                   one(_step='cgroup_containers', container='b')],
                network=one(_step='network', _ip=ip), hosts=[one(_step='hosts', container='a')],
                containers=one(_step='containers', containers=[dict(name='a'), dict(name='b')]),
                status=one(_step='status'), identity={})


def test_converged_pod_checks_every_step_and_runs_none(monkeypatch):
    fake = FakeModules()
    monkeypatch.setattr(pc, 'run_module_logic', fake)
    res = pc.check_steps(fake_steps())
    assert res['converged'] is True and res['run'] == [] and res['changes'] == []
    assert set(res['checked']) == set(pc.STEPS)
    assert res['checked']['status']['status'] == dict(phase='Running')
    by_step = dict((a.get('_step'), a) for _m, a in fake.calls)
    # the inputs from earlier steps, as the role feeds them
    assert by_step['rootfs']['pod_ips'] == ['10.244.0.7']
    assert by_step['network']['netns'] == '/run/netns/barepod-abc'
    assert [c['cgroups'] for c in by_step['containers']['containers']] == [['/cg/m/a'], ['/cg/m/b']]
    assert 'hosts' not in by_step  # the hosts step is a comparison of IPs, not a module call


@pytest.mark.parametrize('first', ['record', 'rootfs', 'sandbox', 'cgroup_pod', 'cgroup_containers', 'network',
                                   'containers', 'status'])
def test_first_change_and_everything_after_it_runs(monkeypatch, first):
    fake = FakeModules(changing=[first, 'status'])
    monkeypatch.setattr(pc, 'run_module_logic', fake)
    res = pc.check_steps(fake_steps())
    assert res['run'] == list(pc.STEPS[pc.STEPS.index(first):])
    assert res['converged'] is False and res['changes']
    assert all(c == dict(action='x', target=first) for c in res['changes'])
    # no step after the first change is checked (its inputs may change when that step runs); a new
    # or changed Pod (record) has the steps whose arguments come from the manifest validated before
    # anything is written (issue 17, item 5), never the hosts/containers steps (they read the rootfs)
    called = [a.get('_step') for _m, a in fake.calls]
    after = called[len(called) - called[::-1].index(first):]
    if first == 'record':
        assert sorted(set(after)) == sorted(pc.VALIDATED_AFTER_RECORD), called
        assert 'containers' not in after and 'hosts' not in after and 'status' not in after
    else:
        assert not after, called


def test_a_new_pod_ip_runs_the_hosts_step_on(monkeypatch):
    monkeypatch.setattr(pc, 'run_module_logic', FakeModules())
    res = pc.check_steps(fake_steps(ip='10.244.0.9'))
    assert res['run'] == ['hosts', 'containers', 'status']


def test_missing_steps_fail_before_anything():
    with pytest.raises(BarepodError) as e:
        pc.check_steps(dict(record={}))
    assert 'steps' in e.value.msg and 'sandbox' in e.value.msg


def test_module_fails_cleanly_on_bad_steps():
    res = run_module('pod_converged', dict(steps=dict(record={})))
    assert res['failed'] and 'steps' in res['msg'] and 'Traceback' not in str(res)
    res = run_module('pod_converged', dict(steps=dict(fake_steps(), record=dict(name='x', bogus=1))))
    assert res['failed'] and 'pod_status' in res['msg'] and 'bogus' in res['msg']


def test_many_pods_one_result_each_and_errors_name_the_pod(monkeypatch):
    monkeypatch.setattr(pc, 'run_module_logic', FakeModules(changing=['containers']))
    res = pc.check_many([fake_steps(), fake_steps(ip='10.244.0.9')])
    assert [r['run'] for r in res] == [['containers', 'status'], ['hosts', 'containers', 'status']]
    with pytest.raises(BarepodError) as e:
        pc.check_many([fake_steps(), dict(record={})])
    assert 'pods[1]' in e.value.msg
    out = run_module('pod_converged', dict(steps=fake_steps(), pods=[fake_steps()]))
    assert out['failed'] and 'mutually exclusive' in out['msg']


@pytest.mark.parametrize('refusing', list(pc.VALIDATED_AFTER_RECORD))
def test_a_new_pod_refused_by_a_later_step_fails_before_the_record_is_written(monkeypatch, refusing):
    """issue 17, item 5: a new pod (the record step changes) whose later step's module refuses its
    arguments fails in pod_converged, before the role's record task, naming that module's field;
    the later steps get the inputs the earlier ones would produce (netns path, cgroup paths)."""
    fake = FakeModules(changing=['record'] + list(pc.VALIDATED_AFTER_RECORD))

    def refuse(module, args, check_mode=True, iptables=None):
        res = fake(module, args, check_mode, iptables)
        if args.get('_step') == refusing:
            raise BarepodError('refused', field='%s.field' % refusing, value=None)
        return res

    monkeypatch.setattr(pc, 'run_module_logic', refuse)
    with pytest.raises(BarepodError, match=r'%s\.field' % refusing):
        pc.check_steps(fake_steps())
    by_step = dict((a.get('_step'), a) for _m, a in fake.calls)
    if refusing == 'network':
        assert by_step['network']['netns'] == '/run/netns/barepod-abc'


def test_a_changed_step_after_the_record_does_not_validate_the_rest(monkeypatch):
    fake = FakeModules(changing=['sandbox'])
    monkeypatch.setattr(pc, 'run_module_logic', fake)
    res = pc.check_steps(fake_steps())
    assert res['run'][0] == 'sandbox'
    assert [a.get('_step') for _m, a in fake.calls] == ['record', 'rootfs', 'sandbox']
