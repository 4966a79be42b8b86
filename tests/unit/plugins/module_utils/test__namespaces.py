"""Pure parts of _namespaces: namespace names, capability masks, /proc parsers."""
import os

import pytest

from ansible_collections.barepod.linux.plugins.module_utils import _namespaces as ns
from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError


def test_default_namespaces_and_aliases():
    assert ns.normalise_namespaces('namespaces', None) == ['pid', 'net', 'mnt', 'uts', 'ipc']
    assert ns.normalise_namespaces('namespaces', ['ipc', 'network', 'mount', 'pid']) == ['pid', 'net', 'mnt', 'ipc']
    assert ns.normalise_namespaces('namespaces', 'uts,net,net') == ['net', 'uts']


@pytest.mark.parametrize('bad', ['time-travel', 'user', 'cgroup', ''])
def test_unknown_namespace_names_field_and_value(bad):
    with pytest.raises(BarepodError) as e:
        ns.normalise_namespaces('namespaces', ['pid', bad])
    assert 'namespaces' in e.value.msg and repr(bad) in e.value.msg


def test_clone_flags():
    assert ns.clone_flags(['pid', 'net']) == ns.CLONE_NEWPID | ns.CLONE_NEWNET
    assert ns.clone_flags(ns.SANDBOX_NAMESPACES) == 0x6c020000


def test_containerd_default_caps_mask():
    # CapEff of a containerd (and docker) container running as root
    assert ns.cap_mask(ns.DEFAULT_CAPABILITIES) == 0xa80425fb
    assert len(ns.DEFAULT_CAPABILITIES) == 14
    assert sorted(ns.cap_names(0xa80425fb)) == sorted(ns.DEFAULT_CAPABILITIES)
    assert 'CAP_SYS_ADMIN' not in ns.DEFAULT_CAPABILITIES and 'CAP_NET_ADMIN' not in ns.DEFAULT_CAPABILITIES


def test_cap_numbers_match_kernel_header():
    assert ns.CAP_NUMBERS['CAP_SYS_ADMIN'] == 21
    assert ns.CAP_NUMBERS['CAP_AUDIT_WRITE'] == 29
    assert ns.CAP_NUMBERS['CAP_CHECKPOINT_RESTORE'] == 40
    with pytest.raises(BarepodError):
        ns.cap_mask(['CAP_FLY'])


def test_masked_and_readonly_paths_are_containerds():
    assert '/proc/kcore' in ns.DEFAULT_MASKED_PATHS and '/sys/firmware' in ns.DEFAULT_MASKED_PATHS
    assert ns.DEFAULT_READONLY_PATHS == ('/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger')


def test_parse_status_caps():
    text = ('Name:\tsh\nCapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\n'
            'CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000000\n'
            'NoNewPrivs:\t1\nSeccomp:\t0\n')
    st = ns.parse_status_caps(text)
    assert st['CapEff'] == 0xa80425fb and st['CapInh'] == 0 and st['NoNewPrivs'] == 1


def test_parse_mountinfo_with_escapes_and_optional_fields():
    text = ('27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n'
            '43 27 254:0 /run/netns /run/netns rw,relatime shared:2 master:1 - ext4 /dev/vda rw\n'
            '50 43 0:4 net:[4026532607] /run/netns/with\\040space rw shared:3 - nsfs nsfs rw\n')
    m = ns.parse_mountinfo(text)
    assert [x[2] for x in m] == ['/', '/run/netns', '/run/netns/with space']
    assert m[1][3] == ['shared:2', 'master:1'] and m[2][4] == 'nsfs'


def test_mount_points_reads_a_given_file(tmp_path):
    p = tmp_path / 'mountinfo'
    p.write_text('27 1 254:0 / / rw - ext4 /dev/vda rw\n30 27 0:5 / /x/y rw - tmpfs t rw\n')
    assert ns.is_mount_point('/x/y/', str(p)) and not ns.is_mount_point('/x', str(p))


def test_ns_inode_of_self_and_of_a_missing_pid():
    assert ns.ns_inode(os.getpid(), 'net') == os.stat('/proc/self/ns/net').st_ino
    assert ns.ns_inode(2 ** 22 + 7, 'net') is None
