# -*- coding: utf-8 -*-
"""Unit tests for _netlink: parsing of netlink messages, sysctls, netns detection (no root)."""
import pytest

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils import _netlink as nl


class Msg(dict):
    """Enough of a pyroute2 nlmsg: item access for fields, get() for NLAs."""

    def __init__(self, fields, attrs):
        super().__init__(fields)
        self.attrs = attrs

    def get(self, key, default=None):
        if key in self.attrs:
            return self.attrs[key]
        return dict.get(self, key, default)


def test_link_dict_veth_on_bridge_with_hairpin():
    slave = Msg({}, {'IFLA_BRPORT_MODE': 1})
    info = Msg({}, {'IFLA_INFO_KIND': 'veth', 'IFLA_INFO_SLAVE_KIND': 'bridge', 'IFLA_INFO_SLAVE_DATA': slave})
    attrs = {'IFLA_IFNAME': 'vethx', 'IFLA_MTU': 1450, 'IFLA_MASTER': 2, 'IFLA_LINK': 2,
             'IFLA_ADDRESS': '0a:58:0a:f4:00:02', 'IFLA_LINKINFO': info}
    m = Msg({'index': 7, 'flags': 0x1003}, attrs)
    d = nl._link_dict(m)
    assert d == dict(index=7, ifname='vethx', kind='veth', mtu=1450, up=True, master=2, link=2,
                     mac='0a:58:0a:f4:00:02', hairpin=True)


def test_link_dict_plain_link_down():
    m = Msg({'index': 1, 'flags': 0x8}, {'IFLA_IFNAME': 'lo', 'IFLA_MTU': 65536})
    d = nl._link_dict(m)
    assert (d['kind'], d['up'], d['hairpin'], d['master']) == (None, False, None, None)


def test_route_dict_default_route():
    m = Msg({'family': 2, 'dst_len': 0, 'proto': 3, 'scope': 0, 'table': 254, 'type': 1},
            {'RTA_GATEWAY': '10.244.0.1', 'RTA_OIF': 2, 'RTA_TABLE': 254})
    assert nl._route_dict(m) == dict(dst='0.0.0.0/0', gateway='10.244.0.1', oif=2, proto=3, scope=0,
                                     table=254, type=1)


def test_sysctl_roundtrip_under_a_fake_proc(tmp_path):
    p = tmp_path / 'sys' / 'net' / 'ipv4'
    p.mkdir(parents=True)
    (p / 'ip_forward').write_text('0\n')
    assert nl.get_sysctl('net.ipv4.ip_forward', str(tmp_path)) == '0'
    nl.set_sysctl('net.ipv4.ip_forward', 1, str(tmp_path))
    assert nl.get_sysctl('net.ipv4.ip_forward', str(tmp_path)) == '1'
    assert nl.get_sysctl('net.ipv4.nope', str(tmp_path)) is None


def test_is_netns():
    assert nl.is_netns('/proc/self/ns/net')
    assert not nl.is_netns('/proc/self/ns')
    assert not nl.is_netns('/nonexistent/netns')
    assert not nl.is_netns('/etc/hostname')


def test_open_ipr_refuses_a_path_that_is_not_a_netns(tmp_path):
    with pytest.raises(BarepodError) as e:
        nl.open_ipr(str(tmp_path / 'missing'))
    assert 'netns' in str(e.value) and 'missing' in str(e.value)
    assert not (tmp_path / 'missing').exists()  # never created (pyroute2's default would)


def test_read_only_calls_on_the_current_namespace():
    ipr = nl.open_ipr()
    try:
        lo = nl.get_link(ipr, 'lo')
        assert lo['ifname'] == 'lo' and lo['index'] >= 1
        assert nl.get_link(ipr, 'bp-nonexistent0') is None
        assert nl.get_link_by_index(ipr, lo['index'])['ifname'] == 'lo'
        assert any(a.startswith('127.0.0.1/') for a in nl.addresses(ipr, lo['index']))
    finally:
        ipr.close()
