"""ns_sandbox's recovery of a sandbox orphaned by a module killed before its record write (no root):
the plan stops the processes found in the pod's netns bind mount, before a new start and on
teardown; netns_holders finds them by the namespace's (dev, inode)."""
import os
import subprocess

from ansible_collections.barepod.linux.plugins.module_utils import _sandbox as sb


def actual(**kw):
    a = dict(uid='u', record=None, record_exists=False, sandbox={}, containers={}, sandbox_alive=False,
             netns_path='/run/netns/barepod-u', netns_exists=True, netns_ok=False, alive={},
             orphans=[dict(pid=4242, starttime=1)])
    a.update(kw)
    return a


def desired(state='present'):
    return sb.desired(dict(name='p', namespace='default', pod_uid='u', state=state, containers=[], netns_dir='/run/netns',
                           state_root='/nonexistent', log_root='/nonexistent'))


def test_plan_stops_orphans_before_a_new_start():
    steps = [(s[0], s[2]) for s in sb.plan(actual(), desired())]
    assert steps[:3] == [('stop_orphans', {'pids': [4242]}), ('remove_netns', {}), ('start_sandbox', steps[2][1])]


def test_plan_stops_orphans_on_teardown():
    steps = [s[0] for s in sb.plan(actual(), desired('absent'))]
    assert steps == ['stop_orphans', 'remove_netns']


def test_no_orphans_no_step():
    assert 'stop_orphans' not in [s[0] for s in sb.plan(actual(orphans=[]), desired())]


def test_netns_holders_matches_the_namespace_inode(tmp_path):
    target = tmp_path / 'netns-file'
    target.write_text('')
    proc = tmp_path / 'proc'
    holder = subprocess.Popen(['sleep', '60'])  # a live pid of ours, for its start time
    try:
        for pid, link in ((holder.pid, str(target)), (1, '/proc/self/ns/net'), (os.getpid(), str(target))):
            (proc / str(pid) / 'ns').mkdir(parents=True)
            os.symlink(link, str(proc / str(pid) / 'ns' / 'net'))
        (proc / 'self').mkdir()
        found = sb.netns_holders(str(target), proc_root=str(proc))
        assert [h['pid'] for h in found] == [holder.pid]    # not pid 1 (other ns), not ourselves
        assert found[0]['starttime'] == sb.pid_starttime(holder.pid)
        assert sb.netns_holders(str(tmp_path / 'missing'), proc_root=str(proc)) == []
    finally:
        holder.kill()
        holder.wait()
