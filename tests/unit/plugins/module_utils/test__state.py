import json
import os

import pytest

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils import _state as s


def test_paths():
    assert s.pod_key('default', 'core-k8s') == 'default_core-k8s'
    assert s.netns_name('1234abcd-ef00-1111-2222-333344445555') == 'barepod-1234abcd'
    assert s.netns_path('abcdef0123', '/x') == '/x/barepod-abcdef01'
    assert s.log_dir('ns', 'p', 'u', 'c', '/var/log/pods') == '/var/log/pods/ns_p_u/c'
    assert s.rootfs_dir('u', 'c', '/r') == '/r/u/c'


@pytest.mark.parametrize('ns,name', [('a/b', 'x'), ('default', '../x'), ('default', 'x;rm -rf /'), ('', 'x')])
def test_pod_key_rejects_unsafe(ns, name):
    with pytest.raises(BarepodError):
        s.pod_key(ns, name)


def test_record_sections_and_zero_writes(tmp_path):
    r = s.PodRecord('default', 'web', state_root=str(tmp_path))
    assert r.load() == {} and not r.exists()
    assert r.update('sandbox', {'pid': 1}, uid='u1') is True
    assert r.update('network', {'ip': '10.244.0.2'}) is True
    mtime = os.stat(r.record_path).st_mtime_ns
    assert r.update('sandbox', {'pid': 1}) is False
    assert os.stat(r.record_path).st_mtime_ns == mtime
    rec = json.load(open(r.record_path))
    assert rec['uid'] == 'u1' and rec['sandbox'] == {'pid': 1} and rec['network']['ip'] == '10.244.0.2'
    assert r.update('network', None) is True
    assert 'network' not in r.load()
    assert s.list_records(str(tmp_path))[0]['name'] == 'web'


def test_record_refuses_other_uid(tmp_path):
    r = s.PodRecord('default', 'web', state_root=str(tmp_path))
    r.update('sandbox', {}, uid='u1')
    with pytest.raises(BarepodError, match='uid'):
        r.update('sandbox', {}, uid='u2')


def test_status_and_remove(tmp_path):
    r = s.PodRecord('default', 'web', state_root=str(tmp_path))
    assert r.write_status({'phase': 'Running'}) is True
    assert r.write_status({'phase': 'Running'}) is False
    assert r.load_status() == {'phase': 'Running'}
    assert r.remove() is True
    assert r.remove() is False


def test_corrupt_record_is_a_clear_error(tmp_path):
    r = s.PodRecord('default', 'web', state_root=str(tmp_path))
    os.makedirs(r.path)
    open(r.record_path, 'w').write('{not json')
    with pytest.raises(BarepodError, match='corrupt'):
        r.load()
