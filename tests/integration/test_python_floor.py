"""The modules under a managed node's Python: the floor (_module.MIN_PYTHON, Debian 11's 3.9) and
the newest (issue 17, item 2: pod_status failed on 3.8/3.9 with `zip() takes no keyword
arguments`, ns_sandbox's teardown needed os.pidfd_open).

Each interpreter gets a venv under build/ with the pinned pyroute2 and PyYAML (conftest.node_python;
missing interpreters skip here and fail under CI=true). The modules run from this checkout with
only the `ansible` package of the controller's venv on their path, as AnsiballZ ships it. A
representative set of the module tests (sandbox bring-up/teardown of a busybox pod in a throwaway
netns, rootfs, cgroups, veth, kube_svc_rules' render and apply in a netns) runs again under each
interpreter through $BAREPOD_TEST_PYTHON; pod_status (with its kubectl-style table) and image_info
run here directly. Below the floor a module refuses to run, naming the floor.
"""

import os
import subprocess
import sys

import pytest

from conftest import NEWEST_PYTHON, REPO, find_python, node_python, run_module
from ansible_collections.barepod.linux.plugins.module_utils import _module

pytestmark = pytest.mark.integration

VERSIONS = [_module.MIN_PYTHON, NEWEST_PYTHON]

# Module tests re-run under each node Python (node ids: a renamed test fails here, loudly).
MODULE_TESTS = [
    'tests/integration/test_ns_sandbox.py::test_lifecycle_check_mode_idempotence_restart_absent',
    'tests/integration/test_ns_sandbox.py::test_shared_pid_namespace_and_run_as_user',
    'tests/integration/test_chroot_rootfs.py::test_busybox_rootfs_with_data_bind_ro_bind_shm_and_etc',
    'tests/integration/test_chroot_rootfs.py::test_absent_check_mode_and_diff',
    'tests/integration/test_chroot_rootfs.py::test_docker_save_image_and_absent',  # shutil.rmtree(dir_fd=) is 3.11+
    'tests/integration/test_cgroup_limit.py::test_v1_limits_written_and_idempotent',
    'tests/integration/test_cgroup_limit.py::test_processes_placed_in_v1_and_unified',
    'tests/integration/test_cgroup_limit.py::test_absent_with_processes_fail_move_kill',
    'tests/integration/test_veth_net.py::test_attach_converges_and_detaches',
    'tests/integration/test_veth_net.py::test_reachability_on_one_node',
    'tests/integration/test_kube_svc_rules.py::test_auto_backend_and_offline_mode',
    'tests/integration/test_image.py::test_pull_cold_then_again',
]

MANIFEST = dict(apiVersion='v1', kind='Pod', metadata=dict(name='floor', namespace='default', labels=dict(app='floor')),
                spec=dict(containers=[dict(name='main', image='busybox', command=['sleep', '3600'])]))


@pytest.fixture(scope='module', params=VERSIONS, ids=lambda v: 'python%d.%d' % v)
def python(request):
    return node_python(request.param), request.param


def test_interpreter_is_the_version_asked(python):
    path, version = python
    out = subprocess.run([path, '-c', 'import sys, pyroute2, yaml; print("%d.%d" % sys.version_info[:2])'],
                         stdout=subprocess.PIPE, check=True).stdout.decode().strip()
    assert out == '%d.%d' % version


def test_pod_status_records_and_lists_like_kubectl(python, tmp_path):
    path, _version = python
    state = str(tmp_path / 'state')
    r = run_module('pod_status', dict(name='floor', namespace='default', manifest=MANIFEST, state_root=state), python=path)
    assert not r.failed, r
    r = run_module('pod_status', dict(state_root=state), python=path)
    assert not r.failed, r
    assert r['table'][0].split() == ['NAME', 'READY', 'STATUS', 'RESTARTS', 'AGE', 'IP', 'NODE']
    assert [p['name'] for p in r['pods']] == ['floor'] and r['table'][1].startswith('floor ')
    r = run_module('pod_status', dict(name='floor', namespace='default', state='absent', state_root=state), python=path)
    assert not r.failed and r.changed, r


def test_image_info_on_an_empty_store(python, tmp_path):
    path, _version = python
    r = run_module('image_info', dict(store_root=str(tmp_path / 'store')), python=path)
    assert not r.failed and not r.changed, r
    assert r['images'] == []


def test_module_tests_pass_under_this_python(python):
    path, _version = python
    env = dict(os.environ, BAREPOD_TEST_PYTHON=path)
    p = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-p', 'no:randomly'] + MODULE_TESTS,
                       cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1200, check=False)
    out = p.stdout.decode(errors='replace')
    assert p.returncode == 0, out[-6000:]
    assert ' passed' in out and ' skipped' not in out, out[-3000:]


def test_below_the_floor_a_module_refuses_naming_the_floor(tmp_path):
    below = (_module.MIN_PYTHON[0], _module.MIN_PYTHON[1] - 1)
    path = find_python(below)
    if path is None:
        pytest.skip('no Python %d.%d to try' % below)  # the unit test of python_too_old still holds
    r = run_module('pod_status', dict(state_root=str(tmp_path / 'state')), python=path)
    assert r.failed and 'need Python %d.%d or newer' % _module.MIN_PYTHON in r['msg'], r
    assert not (tmp_path / 'state').exists()
