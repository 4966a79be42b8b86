# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small netlink helpers over pyroute2: links, addresses, routes, bridges, veth pairs,
network namespaces given by path, and sysctls of the current network namespace.

Everything works on the network namespace of an IPRoute handle: `open_ipr()` for the
namespace the process runs in (the "node"), `open_ipr(path)` for a namespace bind-mounted
at `path` (a pod sandbox). Readers return plain dicts so the planning code above stays
pure and testable without a kernel.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket

try:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    HAS_PYROUTE2 = True
    PYROUTE2_IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - reported by the module with missing_required_lib
    IPRoute = None
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = e

    class NetlinkError(Exception):
        code = 0

# what a module needing pyroute2 passes to _module.run_module(requires=...)
REQUIRES = (('pyroute2', HAS_PYROUTE2, PYROUTE2_IMPORT_ERROR),)

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError

IFF_UP = 0x1
CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
# Routes we own carry this protocol number (rtm_protocol), so they are told apart from the
# kernel's, DHCP's or an admin's routes (/etc/iproute2/rt_protos: unassigned value).
RTPROT_BAREPOD = 98
RTPROT_BOOT = 3  # what the CNI plugins' netlink library puts on routes it adds


def require_pyroute2():
    if not HAS_PYROUTE2:
        raise BarepodError('the pyroute2 Python library is required: %s' % PYROUTE2_IMPORT_ERROR)


def is_netns(path):
    """True when path is a network namespace file (an nsfs bind mount or /proc/<pid>/ns/net)."""
    try:
        st = os.stat(path)
        ref = os.stat('/proc/self/ns/net')
    except OSError:
        return False
    return st.st_dev == ref.st_dev


def netns_inode(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


_libc = None


def _setns(fd):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def netlink_socket_in(netns):
    """A NETLINK_ROUTE socket bound to the namespace at path `netns`.

    A socket belongs to the namespace it was created in, so the calling thread enters the
    namespace, creates it and returns to its own namespace at once (setns on one thread,
    allowed in multi-threaded processes for CLONE_NEWNET). This costs ~1 ms where
    pyroute2's own netns support forks a helper process (~10 ms).
    """
    target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        home = os.open('/proc/thread-self/ns/net', os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
            finally:
                _setns(home)
        finally:
            os.close(home)
    finally:
        os.close(target)


def open_ipr(netns=None):
    """IPRoute on the current namespace, or on the one bind-mounted at `netns` (never created).

    No multicast groups are joined: these handles make requests, they do not listen.
    """
    require_pyroute2()
    if netns is None:
        return IPRoute(groups=0)
    if not is_netns(netns):
        raise BarepodError('%s is not a network namespace (it does not exist or is not '
                           'an nsfs mount)' % netns, field='netns', value=netns)
    try:
        sock = netlink_socket_in(netns)
    except OSError:
        return IPRoute(netns=netns, flags=0, groups=0)
    return IPRoute(use_socket=sock, groups=0)


def ignore(code, fn, *args, **kwargs):
    """Run a netlink call, ignoring one errno (EEXIST on add, ENODEV/ESRCH on delete)."""
    codes = code if isinstance(code, (tuple, list, set)) else (code,)
    try:
        return fn(*args, **kwargs)
    except NetlinkError as e:
        if e.code in codes:
            return None
        raise


# --------------------------------------------------------------------------- links
def _link_dict(msg):
    info = msg.get('IFLA_LINKINFO')
    kind = info.get('IFLA_INFO_KIND') if info is not None else None
    slave = info.get('IFLA_INFO_SLAVE_DATA') if info is not None else None
    hairpin = None
    if slave is not None and info.get('IFLA_INFO_SLAVE_KIND') == 'bridge':
        hairpin = bool(slave.get('IFLA_BRPORT_MODE'))
    return dict(
        index=msg['index'],
        ifname=msg.get('IFLA_IFNAME'),
        kind=kind,
        mtu=msg.get('IFLA_MTU'),
        up=bool(msg['flags'] & IFF_UP),
        master=msg.get('IFLA_MASTER'),
        link=msg.get('IFLA_LINK'),
        mac=msg.get('IFLA_ADDRESS'),
        hairpin=hairpin,
    )


def _get_link(ipr, **key):
    try:
        msgs = ipr.link('get', **key)
    except NetlinkError as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return _link_dict(msgs[0]) if msgs else None


def get_link(ipr, ifname):
    """The link named ifname as a dict (index, ifname, kind, mtu, up, master, link, mac,
    hairpin), or None."""
    return _get_link(ipr, ifname=ifname)


def get_link_by_index(ipr, index):
    """The link with that index, like get_link, or None."""
    return _get_link(ipr, index=index)


def list_links(ipr):
    return [_link_dict(m) for m in ipr.get_links()]


def create_bridge(ipr, name, mtu=None):
    kw = dict(ifname=name, kind='bridge')
    if mtu:
        kw['mtu'] = mtu
    ignore(errno.EEXIST, ipr.link, 'add', **kw)
    return get_link(ipr, name)


def create_veth(ipr, host_ifname, peer_ifname, peer_netns, mtu=None, master=None, up=False):
    """A veth pair: host_ifname here (optionally enslaved to `master` and up, in the same
    RTM_NEWLINK), peer_ifname created directly inside peer_netns."""
    fd = os.open(peer_netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        peer = dict(ifname=peer_ifname, net_ns_fd=fd)
        kw = dict(ifname=host_ifname, kind='veth', peer=peer)
        if mtu:
            kw['mtu'] = mtu
            peer['mtu'] = mtu
        if master:
            kw['master'] = master
        if up:
            kw['state'] = 'up'
        ipr.link('add', **kw)
    finally:
        os.close(fd)
    return get_link(ipr, host_ifname)


def set_link(ipr, index, **kw):
    ipr.link('set', index=index, **kw)


def delete_link(ipr, ifname):
    """Delete a link by name; False when it did not exist."""
    link = get_link(ipr, ifname)
    if link is None:
        return False
    ignore((errno.ENODEV, errno.ENOENT), ipr.link, 'del', index=link['index'])
    return True


def set_hairpin(ipr, index, on=True):
    # IFLA_BRPORT_MODE is the bridge port's hairpin flag (what `bridge link set hairpin on` sets)
    ipr.brport('set', index=index, mode=1 if on else 0)


# --------------------------------------------------------------------------- addresses
def addresses(ipr, index, family=None):
    """['10.244.0.2/24', ...] on a link (IPv6 link-local addresses left out)."""
    out = []
    kw = dict(index=index)
    if family:
        kw['family'] = family
    for m in ipr.get_addr(**kw):
        a = m.get('IFA_ADDRESS')
        if a is None:
            continue
        iface = ipaddress.ip_interface('%s/%d' % (a, m['prefixlen']))
        if iface.version == 6 and iface.ip.is_link_local:
            continue
        out.append(str(iface))
    return sorted(out)


def add_address(ipr, index, cidr):
    iface = ipaddress.ip_interface(cidr)
    kw = dict(index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    if iface.version == 4:
        kw['broadcast'] = str(iface.network.broadcast_address)
    ignore(errno.EEXIST, ipr.addr, 'add', **kw)


def del_address(ipr, index, cidr):
    iface = ipaddress.ip_interface(cidr)
    ignore((errno.EADDRNOTAVAIL, errno.ENOENT), ipr.addr, 'del', index=index,
           address=str(iface.ip), prefixlen=iface.network.prefixlen)


# --------------------------------------------------------------------------- routes
def _route_dict(m):
    dst = m.get('RTA_DST')
    family = m['family']
    if dst is None:
        dst = '0.0.0.0' if family == 2 else '::'
    return dict(dst='%s/%d' % (dst, m['dst_len']), gateway=m.get('RTA_GATEWAY'),
                oif=m.get('RTA_OIF'), proto=m['proto'], scope=m['scope'],
                table=m.get('RTA_TABLE', m['table']), type=m['type'])


def routes(ipr, family=2, table=254, proto=None):
    """Unicast routes of the main table as dicts (dst, gateway, oif, proto, scope, table)."""
    kw = dict(family=family, table=table)
    if proto is not None:
        kw['proto'] = proto
    out = []
    for m in ipr.get_routes(**kw):
        r = _route_dict(m)
        if r['table'] != table or r['type'] != 1:
            continue
        if proto is not None and r['proto'] != proto:
            continue
        out.append(r)
    return out


def add_route(ipr, dst, gateway=None, oif=None, proto=None, replace=False):
    kw = dict(dst=dst)
    if gateway:
        kw['gateway'] = gateway
    if oif:
        kw['oif'] = oif
    if proto is not None:
        kw['proto'] = proto
    if replace:
        ipr.route('replace', **kw)
    else:
        ignore(errno.EEXIST, ipr.route, 'add', **kw)


def del_route(ipr, dst, gateway=None, proto=None):
    kw = dict(dst=dst)
    if gateway:
        kw['gateway'] = gateway
    if proto is not None:
        kw['proto'] = proto
    ignore((errno.ESRCH, errno.ENOENT), ipr.route, 'del', **kw)


def local_addresses(ipr):
    return set(str(ipaddress.ip_interface(a).ip)
               for link in ipr.get_links() for a in addresses(ipr, link['index']))


# --------------------------------------------------------------------------- sysctls
def sysctl_path(key, proc_root='/proc'):
    return os.path.join(proc_root, 'sys', *key.split('.'))


def get_sysctl(key, proc_root='/proc'):
    """Read a sysctl of the calling process's namespaces (net.* are per network namespace)."""
    try:
        with open(sysctl_path(key, proc_root), 'r') as f:
            return f.read().strip()
    except (IOError, OSError):
        return None


def set_sysctl(key, value, proc_root='/proc'):
    with open(sysctl_path(key, proc_root), 'w') as f:
        f.write('%s\n' % value)
