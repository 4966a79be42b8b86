"""ns_sandbox's pure layer: validation (before any change), command resolution inside a
rootfs, and the plan for every observed state. No root, no processes started."""
import os

import pytest

from ansible_collections.barepod.linux.plugins.module_utils import _sandbox as sb
from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError


@pytest.fixture
def rootfs(tmp_path):
    r = tmp_path / 'rootfs'
    (r / 'bin').mkdir(parents=True)
    (r / 'usr' / 'local' / 'bin').mkdir(parents=True)
    exe = r / 'bin' / 'busybox'
    exe.write_bytes(b'\x7fELF fake')
    exe.chmod(0o755)
    (r / 'bin' / 'sh').symlink_to('busybox')
    (r / 'bin' / 'sleep').symlink_to('/bin/busybox')  # absolute: re-rooted inside rootfs
    (r / 'bin' / 'escape').symlink_to('../../../../../../bin/true')  # must not reach the host
    noexec = r / 'bin' / 'data'
    noexec.write_text('x')
    return str(r)


def params(rootfs, **kw):
    p = dict(name='core-k8s', namespace='default', state='present', state_root='/nonexistent/state',
             netns_dir='/nonexistent/netns', log_root='/nonexistent/logs',
             containers=[dict(name='c', rootfs=rootfs, command=['sleep', '10'])])
    p.update(kw)
    return p


def test_desired_normalises(rootfs):
    d = sb.desired(params(rootfs))
    c = d['containers'][0]
    assert c['exe'] == '/bin/sleep' and c['argv'] == ['sleep', '10']
    assert 'HOSTNAME=core-k8s' in c['env'] and c['env'][0].startswith('PATH=')
    assert (c['uid'], c['gid'], c['working_dir']) == (0, 0, '/')
    assert d['namespaces'] == ['pid', 'net', 'mnt', 'uts', 'ipc'] and d['hostname'] == 'core-k8s'
    assert d['grace_period'] == 30


def test_spec_hash_is_stable_and_sensitive(rootfs):
    a = sb.desired(params(rootfs))['containers'][0]['spec_hash']
    assert a == sb.desired(params(rootfs))['containers'][0]['spec_hash']
    other = params(rootfs)
    other['containers'][0]['args'] = ['more']
    assert a != sb.desired(other)['containers'][0]['spec_hash']


def test_env_overrides_defaults_and_user_fields(rootfs):
    p = params(rootfs)
    p['containers'][0].update(env=[dict(name='PATH', value='/usr/local/bin'), dict(name='N', value=3)],
                              command=['busybox'], workingDir='/work',
                              securityContext=dict(runAsUser=1000))
    with pytest.raises(BarepodError) as e:  # busybox is not in /usr/local/bin
        sb.desired(p)
    assert 'containers[0].command' in e.value.msg
    p['containers'][0]['env'][0]['value'] = '/usr/local/bin:/bin'
    c = sb.desired(p)['containers'][0]
    assert c['exe'] == '/bin/busybox' and 'N=3' in c['env'] and 'PATH=/usr/local/bin:/bin' in c['env']
    assert (c['uid'], c['gid'], c['working_dir']) == (1000, 1000, '/work')


@pytest.mark.parametrize('field, override', [
    ('name', dict(name='a/b')),
    ('name', dict(name='..')),
    ('name', dict(name='pod;rm')),
    ('name', dict(name='Pod')),
    ('namespace', dict(namespace='kube system')),
    ('namespace', dict(namespace='../etc')),
    ('uid', dict(pod_uid='../../x')),
    ('namespaces', dict(namespaces=['pid', 'bogus'])),
    ('state', dict(state='running')),
    ('grace_period', dict(grace_period=-1)),
    ('pause', dict(pause='python')),
    ('share_process_namespace', dict(share_process_namespace=True, namespaces=['net'])),
])
def test_bad_pod_input(rootfs, field, override):
    with pytest.raises(BarepodError) as e:
        sb.desired(params(rootfs, **override))
    assert field in e.value.msg


@pytest.mark.parametrize('field, change', [
    ('containers[0].name', dict(name='c/../x')),
    ('containers[0].name', dict(name='c$(reboot)')),
    ('containers[0].name', dict(name='c`id`')),
    ('containers[0].command', dict(command=['no-such-binary'])),
    ('containers[0].command', dict(command=['escape'])),
    ('containers[0].command', dict(command=['/bin/data'])),
    ('containers[0].command', dict(command=[], args=[])),
    ('containers[0].rootfs', dict(rootfs='relative/path')),
    ('containers[0].rootfs', dict(rootfs='/')),
    ('containers[0].rootfs', dict(rootfs='/nonexistent/rootfs')),
    ('containers[0].working_dir', dict(working_dir='tmp')),
    ('containers[0].env[0].name', dict(env=[dict(name='A=B', value='x')])),
    ('containers[0].security_context.run_as_user', dict(security_context=dict(run_as_user=-1))),
])
def test_bad_container_input(rootfs, field, change):
    p = params(rootfs)
    p['containers'][0].update(change)
    with pytest.raises(BarepodError) as e:
        sb.desired(p)
    assert field in e.value.msg, e.value.msg


def test_rootfs_symlink_file_and_symlinked_parent(rootfs, tmp_path):
    link = tmp_path / 'link'
    link.symlink_to(rootfs)
    f = tmp_path / 'file'
    f.write_text('')
    (tmp_path / 'parentlink').symlink_to(tmp_path)
    for bad, why in ((str(link), 'symlink'), (str(f), 'not a directory'),
                     (str(tmp_path / 'parentlink' / 'rootfs'), 'resolves to')):
        with pytest.raises(BarepodError) as e:
            sb.check_rootfs('containers[0].rootfs', bad)
        assert why in e.value.msg and 'containers[0].rootfs' in e.value.msg


def test_duplicate_container_names(rootfs):
    p = params(rootfs)
    p['containers'].append(dict(p['containers'][0]))
    with pytest.raises(BarepodError) as e:
        sb.desired(p)
    assert 'containers[1].name' in e.value.msg


def test_resolve_command_stays_inside_rootfs(rootfs):
    assert sb.resolve_command('f', rootfs, 'sh', sb.DEFAULT_PATH) == '/bin/sh'
    assert sb.resolve_command('f', rootfs, '/bin/sleep', '') == '/bin/sleep'
    assert sb.resolve_command('f', rootfs, './busybox', '', '/bin') == '/bin/busybox'
    with pytest.raises(BarepodError):
        sb.resolve_command('f', rootfs, '../../../../bin/true', '', '/')


def test_default_uid_is_stable():
    assert sb.default_uid('default', 'a') == sb.default_uid('default', 'a') != sb.default_uid('default', 'b')


def test_absent_needs_no_containers(tmp_path):
    d = sb.desired(dict(name='gone', state='absent', containers=[dict(name='x', rootfs='/nope')]))
    assert d['containers'] == []


# ------------------------------------------------------------------ plan

def actual(**kw):
    a = dict(uid='u', record=None, record_exists=False, sandbox={}, containers={}, sandbox_alive=False,
             netns_path='/run/netns/barepod-u', netns_exists=False, netns_ok=False, alive={})
    a.update(kw)
    return a


def names(steps):
    return [(s[0], s[1]) for s in steps]


@pytest.fixture
def d(rootfs):
    return sb.desired(params(rootfs))


def running(d, restart_count=0, spec_hash=None):
    c = d['containers'][0]
    return actual(record_exists=True, sandbox=dict(pid=10, spec_hash=d['sandbox_hash']), sandbox_alive=True,
                  netns_exists=True, netns_ok=True,
                  containers={'c': dict(pid=11, restart_count=restart_count, spec_hash=spec_hash or c['spec_hash'])},
                  alive={'c': True})


def test_plan_fresh_start(d):
    assert names(sb.plan(actual(), d)) == [('start_sandbox', 'core-k8s'), ('start_container', 'c')]
    assert sb.plan(actual(), d)[1][2]['restart_count'] == 0


def test_plan_converged_is_empty(d):
    assert sb.plan(running(d), d) == []


def test_plan_restarts_dead_container_with_count(d):
    a = running(d, restart_count=2)
    a['alive']['c'] = False
    steps = sb.plan(a, d)
    assert names(steps) == [('start_container', 'c')] and steps[0][2]['restart_count'] == 3


def test_plan_replaces_changed_container(d):
    steps = sb.plan(running(d, spec_hash='old'), d)
    assert names(steps) == [('stop_container', 'c'), ('start_container', 'c')]


def test_plan_rebinds_lost_netns(d):
    a = running(d)
    a['netns_ok'] = False
    assert names(sb.plan(a, d)) == [('bind_netns', '/run/netns/barepod-u')]


def test_plan_dead_sandbox_recreates_everything(d):
    a = running(d)
    a['sandbox_alive'] = False
    assert names(sb.plan(a, d)) == [('stop_container', 'c'), ('remove_netns', '/run/netns/barepod-u'),
                                   ('start_sandbox', 'core-k8s'), ('start_container', 'c')]


def test_plan_removed_container_is_stopped_and_forgotten(d):
    a = running(d)
    a['containers']['old'] = dict(pid=12)
    a['alive']['old'] = True
    assert names(sb.plan(a, d)) == [('stop_container', 'old'), ('forget_container', 'old')]


def test_plan_restarted(d):
    d['state'] = 'restarted'
    assert names(sb.plan(running(d), d))[:3] == [('stop_container', 'c'), ('stop_sandbox', 'core-k8s'),
                                                ('remove_netns', '/run/netns/barepod-u')]


class _Rec(object):
    path = '/state/default_core-k8s'


def test_plan_absent(d):
    d['state'] = 'absent'
    a = running(d)
    a['record'] = _Rec()
    assert names(sb.plan(a, d)) == [('stop_container', 'c'), ('stop_sandbox', 'core-k8s'),
                                    ('remove_netns', '/run/netns/barepod-u'), ('remove_record', _Rec.path)]
    assert sb.plan(actual(), d) == []  # already gone: nothing to do
    assert names(sb.plan(actual(netns_exists=True), d)) == [('remove_netns', '/run/netns/barepod-u')]


def test_view_shapes_diff():
    assert sb.view(False, {}) == dict(sandbox='absent', containers={})
    v = sb.view(True, {'c': dict(restart_count=1, spec_hash='h', pid=3)})
    assert v['containers']['c'] == dict(state='running', restart_count=1, spec_hash='h')


def test_manager_check_mode_on_empty_state_root(tmp_path, rootfs):
    p = params(rootfs, state_root=str(tmp_path / 'state'), netns_dir=str(tmp_path / 'netns'))
    r = sb.SandboxManager(p, check_mode=True).run()
    assert r['changed'] and [a['action'] for a in r['actions']] == ['start_sandbox', 'start_container']
    assert r['diff']['before']['sandbox'] == 'absent' and r['diff']['after']['containers']['c']['restart_count'] == 0
    assert not os.path.exists(str(tmp_path / 'state')) and not os.path.exists(str(tmp_path / 'netns'))
