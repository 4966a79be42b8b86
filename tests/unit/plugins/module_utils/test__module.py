"""_module.run_module and the manager protocol every module follows (issue 12, item 1)."""

import importlib

import pytest

from ansible_collections.barepod.linux.plugins.module_utils import _module, _specs
from ansible_collections.barepod.linux.plugins.module_utils import _podconverge as pc
from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils._podstatus import PodStatusManager

MODULES = ['cgroup_info', 'cgroup_limit', 'chroot_rootfs', 'node_routes', 'ns_sandbox', 'pod_converged',
           'pod_status', 'veth_net']
PROTOCOL = {'changed', 'actions', 'diff', 'warnings'}


class _Captured(Exception):
    pass


@pytest.mark.parametrize('name', MODULES)
def test_main_is_run_module_with_the_spec_from_specs(name, monkeypatch):
    mod = importlib.import_module('ansible_collections.barepod.linux.plugins.modules.' + name)
    got = {}

    def fake(**kw):
        got.update(kw)
        raise _Captured()
    monkeypatch.setattr(_module, 'AnsibleModule', fake)
    with pytest.raises(_Captured):
        mod.main()
    assert got == dict(getattr(_specs, name)(), supports_check_mode=True)


def test_module_result_warns_and_returns_diff_only_when_asked():
    warned = []
    res = dict(changed=True, actions=[1], diff=dict(before=1, after=2), warnings=['w'], fact=3)
    out = _module.module_result(res, False, warned.append)
    assert out == dict(changed=True, actions=[1], fact=3) and warned == ['w']
    assert _module.module_result(res, True, warned.append)['diff'] == dict(before=1, after=2)
    assert 'diff' not in _module.module_result(dict(res, diff=None), True, warned.append)


def test_pod_status_result_follows_the_protocol(tmp_path):
    res = PodStatusManager(dict(state_root=str(tmp_path))).run()
    assert PROTOCOL <= set(res) and res['changed'] is False and res['pods'] == []


def test_pod_status_checks_live_in_the_manager_so_pod_converged_gets_them(tmp_path):
    bad = dict(name='p', namespace='default', manifest=dict(metadata=dict(name='q')), state_root=str(tmp_path))
    with pytest.raises(BarepodError) as e:
        PodStatusManager(bad).run()
    assert 'manifest' in e.value.msg
    with pytest.raises(BarepodError) as e:
        pc.run_module_logic('pod_status', bad)
    assert 'manifest' in e.value.msg
    with pytest.raises(BarepodError) as e:
        pc.run_module_logic('pod_status', dict(name='Bad_Name', state_root=str(tmp_path)))
    assert 'name' in e.value.msg
    assert not list(tmp_path.iterdir())  # nothing written before the check


def test_every_pod_step_module_has_a_manager():
    assert set(pc.STEP_MODULES.values()) <= set(pc.MANAGERS)


def test_python_below_the_floor_is_refused_naming_the_floor():
    assert _module.MIN_PYTHON == (3, 9)
    msg = _module.python_too_old((3, 8, 18))
    assert 'Python 3.9 or newer' in msg and 'Python 3.8.18' in msg and 'ansible_python_interpreter' in msg
    assert _module.python_too_old((3, 9, 0)) is None and _module.python_too_old((3, 13, 1)) is None
