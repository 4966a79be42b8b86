"""ns_sandbox as root: the chapter's isolation, observed from inside a real container.

Every test gets throwaway state_root / netns_dir / log_root directories and a unique pod
name; the finalizer tears the pod down (through the module logic, then by killing only the
pids the module reported) and unmounts what the test created, even on failure.
"""
import json
import os
import shutil
import signal
import subprocess
import time
import uuid

import pytest

from conftest import SandboxPod, wait_log
from conftest import log_sections as sections

from ansible_collections.barepod.linux.plugins.module_utils import _namespaces as ns
from ansible_collections.barepod.linux.plugins.module_utils._common import pid_alive
from ansible_collections.barepod.linux.plugins.module_utils._state import netns_path

BUSYBOX = '/bin/busybox'
DEFAULT_CAPEFF = 0xa80425fb  # containerd's 14 default capabilities


@pytest.fixture
def pod(tmp_path):
    with SandboxPod(str(tmp_path)) as p:
        yield p


@pytest.fixture
def host_sleep():
    proc = subprocess.Popen(['sleep', '4321'], stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def mounted(path, mountinfo='/proc/self/mountinfo'):
    return path in ns.mount_points(mountinfo)


def test_chapter_isolation(pod, host_sleep):
    rootfs = pod.rootfs()
    # the masked paths this kernel has: files read as empty, directories list as empty
    masked = [m for m in ns.DEFAULT_MASKED_PATHS if m.startswith('/proc/') and os.path.exists(m)]
    masked_script = ''.join(('echo "%s $(cat %s | wc -c) 0";' if os.path.isfile(m)
                             else 'echo "%s 0 $(ls -A %s | wc -l)";') % (m, m) for m in masked)
    script = ('ps ax; echo -""--; ls /; echo -""--; ip a; echo -""--; hostname; echo -""--; '
              'kill -9 %d && echo KILLED || echo cannot-kill; echo -""--; '
              'grep -E "^(CapEff|CapBnd|CapPrm|CapInh|NoNewPrivs)" /proc/1/status; echo -""--; '
              '(echo 1 > /proc/sys/kernel/ns_last_pid) 2>&1 && echo WROTE || echo read-only; echo -""--; '
              '%s echo -""--; ls /proc/1/fd; echo -""--; ls /dev; echo DO""NE; sleep 1000'
              % (host_sleep.pid, masked_script))
    r = pod.run(containers=[dict(name='box', rootfs=rootfs, command=['sh', '-c', script])])
    assert r['changed'] and not r.failed, r
    c = r['containers'][0]
    out = sections(wait_log(c['log_path']))
    ps, ls, ipa, hostname, kill, caps, ro, kcore, fds, dev = out[:10]
    # ps ax: only the container's processes, the entry process is PID 1
    rows = [line.split(None, 2) for line in ps.splitlines()[1:]]
    assert rows[0][0] == '1' and 'sh -c' in rows[0][2]
    assert all(int(row[0]) < 10 for row in rows), ps
    assert '4321' not in ps and 'pause' not in ps
    # ls /: the rootfs, nothing of the host
    assert ls.split() == sorted(os.listdir(rootfs))
    # ip a: only lo, as the chapter shows before networking
    assert 'lo:' in ipa and 'eth0' not in ipa
    assert len([ln for ln in ipa.splitlines() if not ln.startswith(' ')]) == 1
    assert hostname == pod.name
    # the host's sleep can be neither seen nor killed
    assert 'cannot-kill' in kill
    assert host_sleep.poll() is None
    status = dict(line.split(':') for line in caps.splitlines())
    assert int(status['CapEff'], 16) == DEFAULT_CAPEFF
    assert int(status['CapBnd'], 16) == DEFAULT_CAPEFF
    assert int(status['CapInh'], 16) == 0
    assert status['NoNewPrivs'].strip() == '1'
    assert 'read-only' in ro.splitlines()[-1]
    for line in kcore.splitlines():  # masked: /dev/null bind or an empty read-only tmpfs
        assert line.split()[1:] == ['0', '0'], kcore
    assert len(kcore.splitlines()) == len(masked)
    assert {'null', 'zero', 'urandom', 'pts', 'shm'} <= set(dev.split())
    # only stdin/stdout/stderr are open in the container and in the pause process
    assert fds.split() == ['0', '1', '2']
    assert sorted(os.listdir('/proc/%d/fd' % r['pid'])) == ['0', '1', '2']
    # the sandbox: new namespaces, netns visible at the netns path
    sb = r['sandbox']
    host_ns = ns.ns_inodes(os.getpid())
    for n in ('pid', 'net', 'mnt', 'uts', 'ipc'):
        assert sb['ns_inodes'][n] != host_ns[n]
    for n in ('net', 'uts', 'ipc'):
        assert c['ns_inodes'][n] == sb['ns_inodes'][n]
    for n in ('pid', 'mnt'):
        assert c['ns_inodes'][n] not in (sb['ns_inodes'][n], host_ns[n])
    assert os.stat(r['netns_path']).st_ino == sb['ns_inodes']['net']
    assert sb['rss_kib'] is not None and sb['rss_kib'] <= 1024, sb


def test_chroot_escape_and_host_files_unreachable(pod):
    rootfs = pod.rootfs()
    marker = 'HOSTMARKER-%s' % pod.name
    with open(os.path.join(pod.tmp, marker), 'w') as f:
        f.write('host\n')
    script = ('mkdir -p /x/bin && cp /bin/busybox /x/bin/ && '
              'chroot /x /bin/busybox sh -c "cd ../../..; /bin/busybox ls /"; echo -""--; '
              'cd /../../..; ls; echo -""--; find / -xdev -name "%s"; echo DO""NE' % marker)
    r = pod.run(containers=[dict(name='esc', rootfs=rootfs, command=['sh', '-c', script])])
    assert not r.failed, r
    chrooted, top, found = sections(wait_log(r['containers'][0]['log_path']))
    assert chrooted.split() == ['bin']
    assert top.split() == sorted(os.listdir(rootfs))
    assert found == 'DONE'  # find printed nothing before the end marker


def test_lifecycle_check_mode_idempotence_restart_absent(pod):
    rootfs = pod.rootfs()
    spec = dict(containers=[dict(name='sleeper', rootfs=rootfs, command=['sleep', '1000'])])
    # check mode starts nothing
    r = pod.run(check=True, diff=True, **spec)
    assert r['changed'] and not r.failed, r
    assert r['diff']['before']['sandbox'] == 'absent' and r['diff']['after']['sandbox'] == 'running'
    assert not os.path.exists(pod.base['state_root'] + '/default_' + pod.name)
    assert not os.path.exists(pod.base['netns_dir']) or not os.listdir(pod.base['netns_dir'])
    # present: returns promptly (no hang on the detached sleep 1000: run_module has a timeout)
    r = pod.run(**spec)
    assert r['changed'] and not r.failed, r
    c = r['containers'][0]
    assert pid_alive(r['pid']) and pid_alive(c['pid'])
    record = r['record_path']
    mtime = os.stat(record).st_mtime_ns
    # second run: nothing to do, nothing written
    r2 = pod.run(**spec)
    assert not r2['changed'] and r2['actions'] == [], r2
    assert r2['pid'] == r['pid'] and r2['containers'][0]['pid'] == c['pid']
    assert os.stat(record).st_mtime_ns == mtime
    # a dead container is restarted, restartCount + 1, its own log file
    os.kill(c['pid'], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(c['pid']) and time.monotonic() < deadline:
        time.sleep(0.02)
    r3 = pod.run(**spec)
    assert r3['changed'], r3
    c3 = r3['containers'][0]
    assert c3['restart_count'] == 1 and c3['pid'] != c['pid'] and pid_alive(c3['pid'])
    assert c3['log_path'].endswith('/1.log')
    assert r3['pid'] == r['pid']  # the sandbox was kept
    # changed spec: the container is replaced
    spec2 = dict(containers=[dict(name='sleeper', rootfs=rootfs, command=['sleep', '999'])])
    r4 = pod.run(**spec2)
    assert r4['changed'] and r4['containers'][0]['restart_count'] == 2
    assert not pid_alive(c3['pid'], c3['starttime'])
    # absent in check mode: reports the plan, stops nothing
    nspath = r['netns_path']
    rc = pod.run(state='absent', check=True)
    assert rc['changed'] and [a['action'] for a in rc['actions']][:2] == ['stop_container', 'stop_sandbox']
    assert pid_alive(r['pid']) and pid_alive(r4['containers'][0]['pid']) and os.path.exists(nspath)
    # absent: nothing remains
    r5 = pod.run(state='absent')
    assert r5['changed'] and not r5.failed, r5
    for pid in (r['pid'], r4['containers'][0]['pid']):
        assert not pid_alive(pid)
    assert not os.path.lexists(nspath)
    assert not mounted(nspath)
    assert not os.path.exists(os.path.dirname(record))
    r6 = pod.run(state='absent')
    assert not r6['changed'] and not r6.failed, r6


def test_absent_when_half_gone(pod):
    rootfs = pod.rootfs()
    r = pod.run(containers=[dict(name='c', rootfs=rootfs, command=['sleep', '1000'])])
    assert not r.failed, r
    # the sandbox dies under us, then the record disappears: absent still cleans up
    os.kill(r['pid'], signal.SIGKILL)
    shutil.rmtree(os.path.dirname(r['record_path']))
    r2 = pod.run(state='absent')
    assert r2['changed'] and not r2.failed, r2
    assert not os.path.lexists(r['netns_path']) and not mounted(r['netns_path'])
    # the container (own pid ns) is not in the record any more: the fixture kills its pid


def _marked(uid):
    from ansible_collections.barepod.linux.plugins.module_utils._sandbox import marked_sandboxes
    return [o['pid'] for o in marked_sandboxes(uid)]


@pytest.mark.parametrize('then', ['present', 'absent'])
def test_pause_killed_before_its_netns_bind_is_found_by_its_marker(pod, then):
    """The module SIGKILLed between starting the pause and bind-mounting its netns: no record,
    no netns file names the pause; its environment (BAREPOD_SANDBOX=<uid>) does. The next run
    stops it - before starting a new sandbox, or on teardown - and leaves exactly one (or no)
    pause for the pod."""
    uid = 'f0e1d2c3-0000-4000-8000-%012d' % (os.getpid() % 10 ** 12)
    with pytest.raises(AssertionError) as killed:          # a SIGKILLed module prints nothing
        pod.run(uid=uid, _env_failpoints='sandbox-before-netns=kill')
    assert 'rc=-9' in str(killed.value)
    orphans = _marked(uid)
    assert len(orphans) == 1, orphans
    pod.pids.update(orphans)          # the fixture's safety net, should this test fail
    with open('/proc/%d/environ' % orphans[0], 'rb') as f:
        assert ('BAREPOD_SANDBOX=%s' % uid).encode() in f.read().split(b'\0')
    assert not os.path.lexists(netns_path(uid, pod.base['netns_dir']))
    r2 = pod.run(uid=uid, state=then)
    assert r2['changed'] and not r2.failed, r2
    assert not pid_alive(orphans[0])
    left = _marked(uid)
    if then == 'absent':
        assert left == []
    else:
        assert left == [r2['pid']] and r2['pid'] != orphans[0]
        assert not pod.run(uid=uid)['changed']


def test_sandbox_recreated_when_pause_dies(pod):
    rootfs = pod.rootfs()
    spec = dict(containers=[dict(name='c', rootfs=rootfs, command=['sleep', '1000'])])
    r = pod.run(**spec)
    os.kill(r['pid'], signal.SIGKILL)
    time.sleep(0.1)
    r2 = pod.run(**spec)
    assert r2['changed'] and r2['pid'] != r['pid']
    assert r2['containers'][0]['restart_count'] == 1
    assert not pid_alive(r['containers'][0]['pid'], r['containers'][0]['starttime'])
    assert os.stat(r2['netns_path']).st_ino == r2['sandbox']['ns_inodes']['net']


def test_shared_pid_namespace_and_run_as_user(pod):
    rootfs = pod.rootfs()
    r = pod.run(share_process_namespace=True, containers=[
        dict(name='a', rootfs=rootfs, command=['sleep', '1000']),
        dict(name='b', rootfs=rootfs, command=['sh', '-c'],
             args=['ps ax; echo -""--; id -u; id -g; echo -""--; grep CapEff /proc/self/status; echo -""--; '
                   'echo "$GREETING"; pwd; echo DO""NE; sleep 1000'],
             env=[dict(name='GREETING', value='hello pod')], working_dir='/tmp/work',
             securityContext=dict(runAsUser=1000, runAsGroup=1001)),
    ])
    assert not r.failed, r
    b = r['containers'][1]
    ps, ids, cap, env_cwd = sections(wait_log(b['log_path']))
    rows = [line.split(None, 2) for line in ps.splitlines()[1:]]
    assert rows[0][0] == '1' and 'pause' in rows[0][2]
    assert any('sleep 1000' in row[2] for row in rows)
    assert ids.split() == ['1000', '1001']
    assert int(cap.split()[1], 16) == 0  # non-root: no effective capabilities after exec
    assert env_cwd.splitlines() == ['hello pod', '/tmp/work', 'DONE']
    assert b['ns_inodes']['pid'] == r['sandbox']['ns_inodes']['pid']


def test_pause_reaps_exited_containers_in_shared_pid_namespace(pod):
    rootfs = pod.rootfs()
    r = pod.run(share_process_namespace=True, containers=[
        dict(name='short', rootfs=rootfs, command=['sh', '-c', 'sleep 0.2 & exit 0'])])
    assert not r.failed, r
    assert r['sandbox']['pause'] == 'c'
    pid = r['containers'][0]['pid']
    deadline = time.monotonic() + 5
    while os.path.exists('/proc/%d' % pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists('/proc/%d' % pid), 'not reaped: ' + open('/proc/%d/stat' % pid).read()
    assert r['sandbox']['rss_kib'] <= 1024


@pytest.mark.parametrize('override, field', [
    (dict(name='a/b'), 'name'),
    (dict(name='..'), 'name'),
    (dict(name='pod;reboot'), 'name'),
    (dict(containers=[dict(name='c$(id)', rootfs='ROOTFS', command=['sh'])]), 'containers[0].name'),
    (dict(containers=[dict(name='c', rootfs='ROOTFS', command=['no-such-binary'])]), 'containers[0].command'),
    (dict(namespaces=['pid', 'time-travel']), 'namespaces'),
    (dict(containers=[dict(name='c', rootfs='LINK', command=['sh'])]), 'containers[0].rootfs'),
    (dict(containers=[dict(name='c', rootfs='FILE', command=['sh'])]), 'containers[0].rootfs'),
])
def test_bad_input_fails_before_any_change(pod, override, field):
    rootfs = pod.rootfs()
    link = os.path.join(pod.tmp, 'link')
    os.symlink(rootfs, link)
    afile = os.path.join(pod.tmp, 'afile')
    open(afile, 'w').close()
    subst = dict(ROOTFS=rootfs, LINK=link, FILE=afile)
    args = dict(containers=[dict(name='c', rootfs=rootfs, command=['sh'])])
    args.update(override)
    for c in args.get('containers', []):
        c['rootfs'] = subst.get(c['rootfs'], c['rootfs'])
    r = pod.run(**args)
    assert r.failed and field in r['msg'], r
    assert 'Traceback' not in r['msg']
    assert not os.path.exists(pod.base['state_root'])
    assert not os.path.exists(pod.base['netns_dir'])
    assert not os.path.exists(pod.base['log_root'])


def test_host_bind_mount_visible_and_restarted(pod):
    """The chapter's /data: a host directory bind-mounted into the rootfs (as chroot_rootfs
    does) shows the test's files inside the container; state=restarted starts everything anew."""
    rootfs = pod.rootfs()
    hostdir = os.path.join(pod.tmp, 'hostdata')
    os.makedirs(hostdir)
    with open(os.path.join(hostdir, 'from-host.txt'), 'w') as f:
        f.write('hello from the host\n')
    data = os.path.join(rootfs, 'data')
    os.makedirs(data)
    subprocess.run(['mount', '--bind', hostdir, data], check=True)
    try:
        spec = dict(containers=[dict(name='d', rootfs=rootfs, command=['sh', '-c'],
                                     args=['ls /data; cat /data/from-host.txt; echo DO""NE; sleep 1000'])])
        r = pod.run(**spec)
        assert not r.failed, r
        text = wait_log(r['containers'][0]['log_path'])
        assert 'from-host.txt' in text and 'hello from the host' in text
        r2 = pod.run(state='restarted', **spec)
        assert r2['changed'] and r2['pid'] != r['pid']
        assert r2['containers'][0]['restart_count'] == 1
        assert not pid_alive(r['pid'], r['sandbox']['starttime'])
        assert pid_alive(r2['containers'][0]['pid'], r2['containers'][0]['starttime'])
    finally:
        pod.teardown_pods()
        subprocess.run(['umount', '-l', data], check=False)


def test_exec_failure_is_reported_and_cleanable(pod):
    """A command that passes validation but cannot be executed: a clear error from the child,
    the sandbox already started is recorded, and absent removes it."""
    rootfs = pod.rootfs()
    bogus = os.path.join(rootfs, 'bin', 'bogus')
    with open(bogus, 'w') as f:
        f.write('not an executable format\n')
    os.chmod(bogus, 0o755)
    r = pod.run(containers=[dict(name='c', rootfs=rootfs, command=['bogus'])])
    assert r.failed and 'Exec format error' in r['msg'], r
    rec = os.path.join(pod.base['state_root'], 'default_' + pod.name, 'record.json')
    with open(rec) as f:
        sandbox = json.load(f)['sandbox']
    pod.pids.add(sandbox['pid'])
    assert pid_alive(sandbox['pid'], sandbox['starttime'])
    r2 = pod.run(state='absent')
    assert r2['changed'] and not r2.failed, r2
    assert not pid_alive(sandbox['pid'], sandbox['starttime']) and not os.path.exists(rec)


def test_ip_netns_sees_the_sandbox(pod):
    """With the real /run/netns (a unique uid, so nothing of anyone else is touched), the
    sandbox's network namespace is an ordinary `ip netns` name, removed by absent."""
    uid = str(uuid.uuid4())
    del pod.base['netns_dir']
    r = pod.run(uid=uid, containers=[])
    assert not r.failed and r['netns_path'] == netns_path(uid), r
    name = os.path.basename(r['netns_path'])
    listed = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True, check=True).stdout
    assert name in listed.split()
    links = subprocess.run(['ip', 'netns', 'exec', name, 'ip', '-o', 'link'], capture_output=True, text=True,
                           check=True).stdout
    assert [line.split(':')[1].strip() for line in links.splitlines()] == ['lo']
    r2 = pod.run(uid=uid, state='absent')
    assert r2['changed'] and not r2.failed, r2
    assert not os.path.lexists(r['netns_path']) and not mounted(r['netns_path'])
    listed = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True, check=True).stdout
    assert name not in listed.split()


def test_prune_containers_false_leaves_running_containers_alone(pod):
    """The pod role converges the sandbox alone (before networking) without touching containers."""
    rootfs = pod.rootfs()
    c = dict(name='app', rootfs=rootfs, command=['sleep', '1000'])
    r = pod.run(containers=[c])
    assert not r.failed, r
    cpid = [x['pid'] for x in r['containers'] if x['name'] == 'app'][0]
    r2 = pod.run(containers=[], prune_containers=False)
    assert not r2.failed and not r2.changed, r2
    assert pid_alive(cpid)
    r3 = pod.run(containers=[c])
    assert not r3.changed
    # the default (prune) stops what is no longer declared
    r4 = pod.run(containers=[])
    assert r4.changed
    deadline = time.monotonic() + 10
    while pid_alive(cpid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(cpid)


def test_container_starts_inside_its_cgroups(pod):
    """cgroups: the container's first process is in the given v1 and v2 cgroups before exec."""
    made = []
    roots = [r for r in ('/sys/fs/cgroup/pids', '/sys/fs/cgroup/unified') if os.path.isdir(r)]
    if not roots:
        pytest.skip('no pids or unified cgroup hierarchy mounted')
    try:
        for r in roots:
            d = os.path.join(r, 'barepod-test-' + uuid.uuid4().hex[:8])
            os.mkdir(d)
            made.append(d)
        rootfs = pod.rootfs()
        r = pod.run(containers=[dict(name='app', rootfs=rootfs, command=['sleep', '1000'], cgroups=made)])
        assert not r.failed, r
        cpid = [x['pid'] for x in r['containers'] if x['name'] == 'app'][0]
        for d in made:
            with open(os.path.join(d, 'cgroup.procs')) as f:
                assert str(cpid) in f.read().split()
        bad = pod.run(containers=[dict(name='app', rootfs=rootfs, command=['sleep', '1000'],
                                       cgroups=[os.path.join(rootfs, 'tmp')])])
        assert bad.failed and 'containers[0].cgroups[0]' in bad['msg']
    finally:
        pod.teardown_pods()
        for d in made:
            try:
                os.rmdir(d)
            except OSError:
                # processes still inside: move them to the parent, then remove
                with open(os.path.join(d, 'cgroup.procs')) as f:
                    for pid in f.read().split():
                        with open(os.path.join(os.path.dirname(d), 'cgroup.procs'), 'w') as p:
                            p.write(pid)
                os.rmdir(d)
