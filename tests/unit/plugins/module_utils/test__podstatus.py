import os

from ansible_collections.barepod.linux.plugins.module_utils import _podstatus as ps
from ansible_collections.barepod.linux.plugins.module_utils._state import PodRecord

REC = {
    'namespace': 'default', 'name': 'core-k8s', 'uid': 'u1',
    'manifest': {'metadata': {'labels': {'app': 'x'}},
                 'spec': {'containers': [{'name': 'c1', 'image': 'busybox'}, {'name': 'c2', 'image': 'busybox'}]}},
    'sandbox': {'pid': 10, 'starttime': 1, 'started_at': '2026-11-26T00:00:00Z', 'namespaces': ['net', 'pid']},
    'containers': {'c1': {'pid': 11, 'starttime': 1, 'restart_count': 2, 'started_at': '2026-11-26T00:00:01Z',
                          'spec_hash': 'abcd'},
                   'c2': {'pid': 12, 'starttime': 1, 'restart_count': 0, 'started_at': '2026-11-26T00:00:01Z'}},
    'network': {'ip': '10.244.0.2'},
    'cgroups': {'qos_class': 'Burstable'},
}


def alive_all(entry):
    return bool(entry and entry.get('pid'))


def test_running_pod_status():
    s = ps.compute_status(REC, '172.18.0.2', alive=alive_all)
    assert s['phase'] == 'Running'
    assert s['podIP'] == '10.244.0.2' and s['podIPs'] == [{'ip': '10.244.0.2'}]
    assert s['hostIP'] == '172.18.0.2' and s['qosClass'] == 'Burstable'
    assert s['startTime'] == '2026-11-26T00:00:00Z'
    assert [c['restartCount'] for c in s['containerStatuses']] == [2, 0]
    assert s['containerStatuses'][0]['state'] == {'running': {'startedAt': '2026-11-26T00:00:01Z'}}
    assert dict((c['type'], c['status']) for c in s['conditions'])['Ready'] == 'True'


def test_dead_container_is_not_ready_and_missing_one_is_pending():
    s = ps.compute_status(REC, alive=lambda e: bool(e) and e.get('pid') != 12)
    assert s['phase'] == 'Running'
    c2 = s['containerStatuses'][1]
    assert not c2['ready'] and 'terminated' in c2['state']
    assert dict((c['type'], c['status']) for c in s['conditions'])['Ready'] == 'False'
    rec = dict(REC, containers={'c1': REC['containers']['c1']})
    s = ps.compute_status(rec, alive=alive_all)
    assert s['phase'] == 'Pending'
    assert s['containerStatuses'][1]['state'] == {'waiting': {'reason': 'ContainerCreating'}}
    assert ps.compute_status(REC, alive=lambda e: False)['phase'] == 'Pending'


def test_status_is_stable_across_calls():
    assert ps.compute_status(REC, alive=alive_all) == ps.compute_status(REC, alive=alive_all)


def test_wide_row_and_table():
    s = ps.compute_status(REC, alive=alive_all)
    row = ps.wide_row('default', 'core-k8s', s, 'kind-control-plane', now=0 + 1795651200 + 300)
    assert row['ready'] == '2/2' and row['restarts'] == 2 and row['ip'] == '10.244.0.2'
    lines = ps.format_table([row])
    assert lines[0].split() == ['NAME', 'READY', 'STATUS', 'RESTARTS', 'AGE', 'IP', 'NODE']
    assert lines[1].split()[:4] == ['core-k8s', '2/2', 'Running', '2']


def test_age():
    assert ps._age('2026-11-26T00:00:00Z', now=1795651200 + 59) in ('59s',)
    assert ps._age(None) == '<unknown>'


def test_manager_records_manifest_and_status_once(tmp_path):
    root = str(tmp_path)
    m = {'apiVersion': 'v1', 'kind': 'Pod', 'metadata': {'name': 'p', 'labels': {'a': 'b'}},
         'spec': {'containers': [{'name': 'c'}]}}
    r = ps.PodStatusManager(dict(name='p', namespace='default', manifest=m, state_root=root)).run()
    assert r['changed'] and r['exists']
    rec = PodRecord('default', 'p', root)
    mtime = os.stat(rec.record_path).st_mtime_ns
    r = ps.PodStatusManager(dict(name='p', namespace='default', manifest=m, state_root=root)).run()
    assert not r['changed']
    assert os.stat(rec.record_path).st_mtime_ns == mtime
    listing = ps.PodStatusManager(dict(state_root=root, selector={'a': 'b'})).run()
    assert [p['name'] for p in listing['pods']] == ['p']
    assert ps.PodStatusManager(dict(state_root=root, selector={'a': 'c'})).run()['pods'] == []
    # absent removes the record (nothing but the manifest is left in it)
    check = ps.PodStatusManager(dict(name='p', namespace='default', state='absent', state_root=root),
                                check_mode=True).run()
    assert check['changed'] and os.path.exists(rec.path)
    assert ps.PodStatusManager(dict(name='p', namespace='default', state='absent', state_root=root)).run()['changed']
    assert not os.path.exists(rec.path)
    assert not ps.PodStatusManager(dict(name='p', namespace='default', state='absent', state_root=root)).run()['changed']
