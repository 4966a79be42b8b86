# -*- coding: utf-8 -*-
"""Unit tests for _ipam: host-local's on-disk format, allocation order, locking."""
import ipaddress
import multiprocessing
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils import _ipam

A = ipaddress.ip_address


def rs(subnet='10.244.0.0/24', **kw):
    return _ipam.RangeSet([_ipam.Range(subnet, **kw)])


# --------------------------------------------------------------------------- ranges
def test_range_defaults_like_host_local_canonicalize():
    r = _ipam.Range('10.244.0.0/24')
    assert (str(r.range_start), str(r.range_end), str(r.gateway)) == ('10.244.0.1', '10.244.0.254', '10.244.0.1')


def test_range_explicit_bounds():
    r = _ipam.Range('10.0.0.0/16', range_start='10.0.5.10', range_end='10.0.5.20', gateway='10.0.0.254')
    assert r.contains(A('10.0.5.10')) and r.contains(A('10.0.5.20'))
    assert not r.contains(A('10.0.5.21')) and not r.contains(A('10.0.5.9'))


@pytest.mark.parametrize('cidr', ['10.244.0.0', '10.244.0.0/33', 'banana/24', '10.244.0.1/24', '10.0.0.0/31', '', None])
def test_malformed_or_too_small_cidr(cidr):
    with pytest.raises(BarepodError) as e:
        _ipam.parse_subnet('subnet', cidr)
    assert 'subnet' in str(e.value)


def test_gateway_outside_subnet():
    with pytest.raises(BarepodError) as e:
        _ipam.Range('10.244.0.0/24', gateway='10.245.0.1')
    assert 'gateway' in str(e.value) and '10.245.0.1' in str(e.value)


def test_range_start_outside_subnet_and_inverted():
    with pytest.raises(BarepodError, match='range_start'):
        _ipam.Range('10.244.0.0/24', range_start='10.1.0.1')
    with pytest.raises(BarepodError, match='range_start'):
        _ipam.Range('10.244.0.0/24', range_start='10.244.0.9', range_end='10.244.0.3')


@pytest.mark.parametrize('name', ['', '..', 'a/b', None])
def test_bad_network_names(name):
    with pytest.raises(BarepodError):
        _ipam.Store(name, '/nonexistent')


# --------------------------------------------------------------------------- iteration order
def test_iterate_from_start_skips_gateway():
    got = [str(a) for a, _unused in _ipam.iterate(rs('10.0.0.0/29'))]
    assert got == ['10.0.0.2', '10.0.0.3', '10.0.0.4', '10.0.0.5', '10.0.0.6']


def test_iterate_round_robin_after_last_reserved_and_wraps():
    got = [str(a) for a, _unused in _ipam.iterate(rs('10.0.0.0/29'), A('10.0.0.4'))]
    assert got == ['10.0.0.5', '10.0.0.6', '10.0.0.2', '10.0.0.3', '10.0.0.4']


def test_iterate_last_reserved_at_range_end():
    got = [str(a) for a, _unused in _ipam.iterate(rs('10.0.0.0/29'), A('10.0.0.6'))]
    assert got == ['10.0.0.2', '10.0.0.3', '10.0.0.4', '10.0.0.5', '10.0.0.6']


def test_iterate_ignores_last_reserved_outside_range():
    got = [str(a) for a, _unused in _ipam.iterate(rs('10.0.0.0/29'), A('192.168.0.9'))]
    assert got[0] == '10.0.0.2'


def test_iterate_multiple_ranges():
    s = _ipam.RangeSet([_ipam.Range('10.0.0.0/30'), _ipam.Range('10.0.1.0/30')])
    assert [str(a) for a, _unused in _ipam.iterate(s, A('10.0.0.2'))] == ['10.0.1.2', '10.0.0.2']


# --------------------------------------------------------------------------- the store
def test_reserve_writes_host_local_bytes(tmp_path):
    store = _ipam.Store('net', str(tmp_path))
    alloc = _ipam.Allocator(store, rs())
    ip, _unused, new = alloc.allocate('cid1', 'eth0')
    assert (str(ip), new) == ('10.244.0.2', True)
    d = tmp_path / 'net'
    assert (d / '10.244.0.2').read_bytes() == b'cid1\r\neth0'
    assert (d / 'last_reserved_ip.0').read_bytes() == b'10.244.0.2'
    assert (d / 'lock').exists()
    assert oct(os.stat(str(d)).st_mode & 0o777) == oct(0o755)
    assert oct(os.stat(str(d / '10.244.0.2')).st_mode & 0o777) == oct(0o644)


def test_allocate_is_idempotent_and_round_robin(tmp_path):
    alloc = _ipam.Allocator(_ipam.Store('net', str(tmp_path)), rs())
    a = alloc.allocate('c1', 'eth0')[0]
    assert alloc.allocate('c1', 'eth0') == (a, alloc.rangeset[0], False)
    b = alloc.allocate('c2', 'eth0')[0]
    assert b == a + 1
    alloc.release('c1', 'eth0')
    # round-robin: the released address is not handed out again right away
    assert alloc.allocate('c3', 'eth0')[0] == b + 1


def test_same_id_other_ifname_gets_another_address(tmp_path):
    alloc = _ipam.Allocator(_ipam.Store('net', str(tmp_path)), rs())
    assert alloc.allocate('c1', 'eth0')[0] != alloc.allocate('c1', 'net1')[0]


def test_peek_writes_nothing(tmp_path):
    alloc = _ipam.Allocator(_ipam.Store('net', str(tmp_path)), rs())
    ip, _unused, new = alloc.peek('c1', 'eth0')
    assert (str(ip), new) == ('10.244.0.2', True)
    assert not (tmp_path / 'net').exists()
    alloc.allocate('c1', 'eth0')
    assert alloc.peek('c1', 'eth0')[2] is False


def test_exhausted_range_clear_error(tmp_path):
    alloc = _ipam.Allocator(_ipam.Store('net', str(tmp_path)), rs('10.0.0.0/30'))
    alloc.allocate('c1', 'eth0')
    with pytest.raises(BarepodError, match='no IP addresses available'):
        alloc.allocate('c2', 'eth0')
    with pytest.raises(BarepodError, match='no IP addresses available'):
        alloc.peek('c2', 'eth0')


def test_requested_ip(tmp_path):
    alloc = _ipam.Allocator(_ipam.Store('net', str(tmp_path)), rs())
    assert alloc.allocate('c1', 'eth0', A('10.244.0.50'))[0] == A('10.244.0.50')
    assert alloc.allocate('c1', 'eth0', A('10.244.0.50'))[2] is False
    with pytest.raises(BarepodError, match='already allocated to c1'):
        alloc.allocate('c2', 'eth0', A('10.244.0.50'))
    with pytest.raises(BarepodError, match='already allocated to c1'):
        alloc.peek('c2', 'eth0', A('10.244.0.50'))
    with pytest.raises(BarepodError, match='gateway'):
        alloc.allocate('c3', 'eth0', A('10.244.0.1'))


def test_reads_old_id_only_files_and_foreign_files(tmp_path):
    d = tmp_path / 'net'
    d.mkdir()
    (d / '10.244.0.7').write_bytes(b'oldcid')  # written by an old host-local
    (d / 'README').write_text('not an address')
    store = _ipam.Store('net', str(tmp_path))
    assert store.allocations() == {A('10.244.0.7'): ('oldcid', None)}
    assert store.get_by_id('oldcid', 'eth0') == [A('10.244.0.7')]
    assert store.release_by_id('oldcid', 'eth0') == [A('10.244.0.7')]
    assert not (d / '10.244.0.7').exists()


def test_stale_allocation_outside_new_subnet(tmp_path):
    store = _ipam.Store('net', str(tmp_path))
    _ipam.Allocator(store, rs('10.1.0.0/24')).allocate('c1', 'eth0')
    alloc = _ipam.Allocator(store, rs('10.2.0.0/24'))
    assert alloc.stale('c1', 'eth0') == [A('10.1.0.2')]
    assert alloc.peek('c1', 'eth0')[0] == A('10.2.0.2')


def test_garbage(tmp_path):
    store = _ipam.Store('net', str(tmp_path))
    alloc = _ipam.Allocator(store, rs())
    for c in ('alive', 'dead1', 'dead2'):
        alloc.allocate(c, 'eth0')
    dead = _ipam.garbage(store, lambda cid, ifname: cid == 'alive')
    assert sorted(owner for addr, owner in dead) == ['dead1', 'dead2']


def _worker(args):
    data_dir, cid = args
    alloc = _ipam.Allocator(_ipam.Store('net', data_dir), rs('10.9.0.0/26'))
    try:
        return str(alloc.allocate(cid, 'eth0')[0])
    except BarepodError as e:
        return 'ERR ' + str(e)


def test_concurrent_processes_never_share_an_address(tmp_path):
    jobs = [(str(tmp_path), 'c%02d' % i) for i in range(70)]  # 61 usable addresses
    with multiprocessing.Pool(8) as pool:
        got = pool.map(_worker, jobs)
    ips = [g for g in got if not g.startswith('ERR')]
    errs = [g for g in got if g.startswith('ERR')]
    assert len(ips) == 61 and len(set(ips)) == 61
    assert len(errs) == 9 and all('no IP addresses available' in e for e in errs)
    files = [n for n in os.listdir(str(tmp_path / 'net')) if n[0].isdigit()]
    assert sorted(files) == sorted(ips)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.integers(min_value=26, max_value=30), ops=st.lists(
    st.tuples(st.sampled_from(['alloc', 'release']), st.integers(min_value=0, max_value=9)), max_size=40))
def test_property_allocations_unique_in_range_and_never_gateway(tmp_path_factory, prefix, ops):
    d = str(tmp_path_factory.mktemp('ipam'))
    rset = rs('10.7.0.0/%d' % prefix)
    alloc = _ipam.Allocator(_ipam.Store('net', d), rset)
    held = {}
    for op, n in ops:
        cid = 'c%d' % n
        if op == 'alloc':
            try:
                ip = alloc.allocate(cid, 'eth0')[0]
            except BarepodError:
                free = [a for a, _unused in _ipam.iterate(rset) if a not in held.values()]
                assert cid not in held and not free
                continue
            assert held.get(cid, ip) == ip
            held[cid] = ip
        else:
            alloc.release(cid, 'eth0')
            held.pop(cid, None)
        assert len(set(held.values())) == len(held)
        assert all(rset.contains(a) and a != rset[0].gateway for a in held.values())
        assert dict((c, a) for a, (c, ifn) in alloc.store.allocations().items()) == held
