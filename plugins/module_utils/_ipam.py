# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""IP address management in the CNI host-local plugin's on-disk format.

The layout is exactly what containernetworking/plugins host-local writes
(plugins/ipam/host-local/backend/disk/backend.go), so tools that read one read the other:

    <data_dir>/<network>/                 created 0755
    <data_dir>/<network>/lock             flock(LOCK_EX) around every read-modify-write
    <data_dir>/<network>/<ip>             "<container id>\\r\\n<ifname>", created O_EXCL, 0644
    <data_dir>/<network>/last_reserved_ip.<range set id>   the last address handed out

Allocation order is host-local's: round-robin, starting after the last reserved address
of the range set, skipping the gateway, wrapping to rangeStart, giving up after one loop.

Differences from host-local, on purpose:
- a second allocation for the same (container id, ifname) returns the address it already
  holds instead of failing with "duplicate allocation" (this is what makes the module
  converge);
- `peek()` computes the address an allocation would get without writing (check mode).

Pure Python (no Ansible, no netlink): the data dir is a parameter.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re

from ansible_collections.barepod.linux.plugins.module_utils import _defaults
from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError, exclusive_lock

LINE_BREAK = '\r\n'
LAST_IP_PREFIX = 'last_reserved_ip.'
LOCK_NAME = 'lock'
DEFAULT_DATA_DIR = _defaults.CNI_DATA_DIR
NETWORK_NAME_MAX = 255
NETWORK_NAME_RE = re.compile(r'^[a-zA-Z0-9][a-zA-Z0-9_.\-]*\Z')


def parse_subnet(field, value):
    """A pod CIDR such as '10.244.0.0/24' (host bits must be zero), as an ip_network."""
    if not isinstance(value, str) or '/' not in value:
        raise BarepodError('%r is not a CIDR (expected e.g. 10.244.0.0/24)' % (value,),
                           field=field, value=value)
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise BarepodError('%r is not a valid CIDR: %s' % (value, e), field=field, value=value)
    if net.num_addresses < 4:
        # host-local: "Network %s too small to allocate from" (/31, /32, /127, /128)
        raise BarepodError('network %s is too small to allocate from' % net, field=field, value=value)
    return net


def parse_ip(field, value):
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise BarepodError('%r is not a valid IP address' % (value,), field=field, value=value)


def validate_network_name(field, value):
    if not isinstance(value, str) or not value or len(value) > NETWORK_NAME_MAX:
        raise BarepodError('must be a non-empty name', field=field, value=value)
    if '/' in value or value in ('.', '..') or '\0' in value:
        raise BarepodError('network name %r must not contain "/" or be "." or ".."' % (value,),
                           field=field, value=value)
    if not NETWORK_NAME_RE.match(value):
        # libcni's ValidateNetworkName: the name is a directory here and goes into the
        # masquerade rules' comments, where a quote or newline would break out
        raise BarepodError('network name %r may hold only letters, digits, "_", "." and "-", starting '
                           'with a letter or digit' % (value,), field=field, value=value)
    return value


class Range(object):
    """One host-local range: subnet, rangeStart, rangeEnd, gateway (Canonicalize())."""

    def __init__(self, subnet, range_start=None, range_end=None, gateway=None):
        self.subnet = parse_subnet('subnet', subnet) if isinstance(subnet, str) else subnet
        net = self.subnet
        if gateway is None:
            self.gateway = net.network_address + 1
        else:
            self.gateway = parse_ip('gateway', gateway)
            if self.gateway not in net:
                raise BarepodError('gateway %s is not in network %s' % (self.gateway, net),
                                   field='gateway', value=str(gateway))
        self.range_start = self._bound('range_start', range_start, net.network_address + 1)
        last = net.broadcast_address - 1 if net.version == 4 else net.broadcast_address
        self.range_end = self._bound('range_end', range_end, last)
        if self.range_start > self.range_end:
            raise BarepodError('range_start %s is after range_end %s' % (self.range_start, self.range_end),
                               field='range_start', value=str(self.range_start))

    def _bound(self, field, value, default):
        if value is None:
            return default
        addr = parse_ip(field, value)
        if addr not in self.subnet:
            raise BarepodError('%s is not in network %s' % (addr, self.subnet), field=field, value=str(value))
        return addr

    def contains(self, addr):
        return addr.version == self.subnet.version and self.range_start <= addr <= self.range_end

    def __repr__(self):
        return '%s-%s' % (self.range_start, self.range_end)


class RangeSet(list):
    def contains(self, addr):
        return any(r.contains(addr) for r in self)

    def range_for(self, addr):
        for r in self:
            if r.contains(addr):
                return r
        return None

    def __str__(self):
        return ','.join(repr(r) for r in self)


def iterate(rangeset, last_reserved=None):
    """host-local's RangeIter: candidates (ip, range) in allocation order, gateway skipped."""
    idx, cur, start = 0, None, None
    if last_reserved is not None:
        for i, r in enumerate(rangeset):
            if r.contains(last_reserved):
                idx, cur = i, last_reserved
                break
    while True:
        r = rangeset[idx]
        if cur is None:
            cur = r.range_start
            start = cur
        elif cur == r.range_end:
            idx = (idx + 1) % len(rangeset)
            r = rangeset[idx]
            cur = r.range_start
            if start is None:
                start = cur
            elif cur == start:
                return
        else:
            cur = cur + 1
            if start is None:
                start = cur
            elif cur == start:
                return
        if cur == r.gateway:
            continue
        yield cur, r


class Store(object):
    """The host-local disk store for one network under data_dir."""

    def __init__(self, network, data_dir=DEFAULT_DATA_DIR):
        validate_network_name('network', network)
        self.network = network
        self.data_dir = data_dir
        self.dir = os.path.join(data_dir, network)

    # -- locking -------------------------------------------------------------------------
    def lock(self):
        """flock on <dir>/lock, as go-filemutex does for host-local (creates the dir)."""
        if not os.path.isdir(self.dir):
            os.makedirs(self.dir, 0o755, exist_ok=True)
        return exclusive_lock(os.path.join(self.dir, LOCK_NAME), 0o644)

    # -- reading -------------------------------------------------------------------------
    def allocations(self):
        """{ip_address: (container_id, ifname or None)} for every file named like an IP."""
        out = {}
        try:
            names = os.listdir(self.dir)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return out
            raise
        for name in names:
            try:
                addr = ipaddress.ip_address(name)
            except ValueError:
                continue
            try:
                with open(os.path.join(self.dir, name), 'r', newline='') as f:
                    data = f.read().strip()
            except (IOError, OSError):
                continue
            if LINE_BREAK in data:
                cid, ifname = data.split(LINE_BREAK, 1)
            else:
                cid, ifname = data, None  # written by an old host-local: id only
            out[addr] = (cid.strip(), ifname)
        return out

    def get_by_id(self, container_id, ifname):
        """Addresses held by (container id, ifname), host-local GetByID (incl. id-only files)."""
        cid = container_id.strip()
        return sorted(a for a, (c, i) in self.allocations().items()
                      if c == cid and i in (ifname, None))

    def last_reserved(self, rangeset_id='0'):
        try:
            with open(os.path.join(self.dir, LAST_IP_PREFIX + rangeset_id), 'r') as f:
                return ipaddress.ip_address(f.read().strip())
        except (IOError, OSError, ValueError):
            return None

    # -- writing (call with the lock held) ----------------------------------------------
    def reserve(self, container_id, ifname, addr, rangeset_id='0'):
        """Create <dir>/<ip> exclusively; False when it already exists."""
        path = os.path.join(self.dir, str(addr))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.EEXIST:
                return False
            raise
        try:
            os.write(fd, (container_id.strip() + LINE_BREAK + ifname).encode())
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        with open(os.path.join(self.dir, LAST_IP_PREFIX + rangeset_id), 'w') as f:
            f.write(str(addr))
        return True

    def release_ip(self, addr):
        try:
            os.unlink(os.path.join(self.dir, str(addr)))
            return True
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise

    def release_by_id(self, container_id, ifname):
        """host-local ReleaseByID: remove every file holding this id (+ifname); returns IPs."""
        released = []
        for addr in self.get_by_id(container_id, ifname):
            if self.release_ip(addr):
                released.append(addr)
        return released


class Allocator(object):
    """host-local's allocator over one range set, idempotent per (container id, ifname)."""

    def __init__(self, store, rangeset, rangeset_id='0'):
        self.store = store
        self.rangeset = rangeset if isinstance(rangeset, RangeSet) else RangeSet(rangeset)
        self.rangeset_id = rangeset_id

    def _existing(self, container_id, ifname):
        return [a for a in self.store.get_by_id(container_id, ifname) if self.rangeset.contains(a)]

    def _check_requested(self, requested, container_id):
        r = self.rangeset.range_for(requested)
        if r is None:
            raise BarepodError('requested address %s is not in range set %s' % (requested, self.rangeset),
                               field='ip', value=str(requested))
        if requested == r.gateway:
            raise BarepodError('requested address %s is the subnet\'s gateway' % requested,
                               field='ip', value=str(requested))
        holder = self.store.allocations().get(requested)
        if holder is not None and holder[0] != container_id.strip():
            raise BarepodError('address %s is already allocated to %s' % (requested, holder[0]),
                               field='ip', value=str(requested))
        return r

    def peek(self, container_id, ifname, requested=None):
        """(ip, range, is_new) the allocation would give, without writing anything."""
        existing = self._existing(container_id, ifname)
        if requested is not None:
            r = self._check_requested(requested, container_id)
            return requested, r, requested not in existing
        if existing:
            return existing[0], self.rangeset.range_for(existing[0]), False
        taken = self.store.allocations()
        for addr, r in iterate(self.rangeset, self.store.last_reserved(self.rangeset_id)):
            if addr not in taken:
                return addr, r, True
        raise BarepodError('no IP addresses available in range set %s of network %s'
                           % (self.rangeset, self.store.network), field='subnet',
                           value=str(self.rangeset[0].subnet))

    def allocate(self, container_id, ifname, requested=None):
        """Reserve (or find) the address for (container id, ifname). Returns (ip, range, new)."""
        with self.store.lock():
            existing = self._existing(container_id, ifname)
            if requested is not None:
                r = self._check_requested(requested, container_id)
                if requested in existing:
                    return requested, r, False
                if not self.store.reserve(container_id, ifname, requested, self.rangeset_id):
                    raise BarepodError('address %s is already allocated' % requested,
                                       field='ip', value=str(requested))
                return requested, r, True
            if existing:
                return existing[0], self.rangeset.range_for(existing[0]), False
            for addr, r in iterate(self.rangeset, self.store.last_reserved(self.rangeset_id)):
                if self.store.reserve(container_id, ifname, addr, self.rangeset_id):
                    return addr, r, True
        raise BarepodError('no IP addresses available in range set %s of network %s'
                           % (self.rangeset, self.store.network), field='subnet',
                           value=str(self.rangeset[0].subnet))

    def release(self, container_id, ifname):
        with self.store.lock():
            return self.store.release_by_id(container_id, ifname)

    def stale(self, container_id, ifname):
        """Addresses this id holds outside the range set (the subnet changed)."""
        return [a for a in self.store.get_by_id(container_id, ifname) if not self.rangeset.contains(a)]


def garbage(store, alive):
    """Allocations whose owner is gone: [(ip, container_id)] where not alive(container_id, ifname)."""
    out = []
    for addr, (cid, ifname) in sorted(store.allocations().items()):
        if not alive(cid, ifname):
            out.append((addr, cid))
    return out
