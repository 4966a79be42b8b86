# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pod networking like the CNI bridge + host-local plugins, over netlink (veth_net).

    node netns (where the module runs)          pod netns (bind mount, e.g. /run/netns/barepod-xxxx)
    cni0 (bridge, gateway 10.244.0.1/24)
      `- vethXXXXXXXXXXX (hairpin, master cni0) <==veth==> eth0 10.244.0.2/24, default via .1
    net.ipv4.ip_forward = 1                                lo up
    nat: POSTROUTING -s 10.244.0.2 -j CNI-<hash>; CNI-<hash>: -d 10.244.0.0/24 ACCEPT,
         ! -d 224.0.0.0/4 MASQUERADE (the bridge plugin's ipMasq, same chain name/comment)

The shape is observe -> plan (Actions, the single check-mode choke point) -> apply. In
check mode nothing is written (the address comes from Allocator.peek()); a converged run
plans nothing and writes nothing. (The routes to other nodes' pod CIDRs are _noderoutes.)

The iptables part goes through _iptables.Backend (iptables-save to observe, one
`iptables-restore --noflush` batch to change), owning only rules tagged with its comment.
"""

from __future__ import annotations

import hashlib
import os

from ansible_collections.barepod.linux.plugins.module_utils._common import (
    Actions, BarepodError, Manager, result, validate_ifname, validate_uid)
from ansible_collections.barepod.linux.plugins.module_utils._common import failpoint
from ansible_collections.barepod.linux.plugins.module_utils import _defaults
from ansible_collections.barepod.linux.plugins.module_utils import _ipam
from ansible_collections.barepod.linux.plugins.module_utils import _iptables
from ansible_collections.barepod.linux.plugins.module_utils import _netlink as nl
from ansible_collections.barepod.linux.plugins.module_utils._state import PodRecord, list_records, netns_path

MULTICAST_V4 = '224.0.0.0/4'
CHAIN_PREFIX = 'CNI-'
MAX_CHAIN = 28  # iptables chain names are at most 28 characters


# --------------------------------------------------------------------------- names
def host_ifname_for(uid):
    """Deterministic host-side veth name: 'veth' + 11 hex of sha256(uid) = 15 characters."""
    return 'veth' + hashlib.sha256(uid.encode()).hexdigest()[:11]


def chain_name(network, container_id):
    """The CNI bridge plugin's ipMasq chain: utils.FormatChainName(network, containerID)."""
    h = hashlib.sha512((network + container_id).encode()).hexdigest()
    return (CHAIN_PREFIX + h)[:MAX_CHAIN]


def _goquote(s):
    return '"%s"' % s.replace('\\', '\\\\').replace('"', '\\"')


def masq_comment(network, container_id):
    """utils.FormatComment: name: "<network>" id: "<container id>"."""
    return 'name: %s id: %s' % (_goquote(network), _goquote(container_id))


def _save_quote(s):
    # how iptables-save prints a --comment argument (libxtables xtables_save_string: a backslash
    # before each of " \ and ', which iptables-restore reads back as the character itself)
    return '"%s"' % s.replace('\\', '\\\\').replace('"', '\\"').replace("'", "\\'")


def masq_rules(network, container_id, ip, subnet):
    """The three rules the bridge plugin installs, as iptables-save prints them."""
    chain = chain_name(network, container_id)
    c = _save_quote(masq_comment(network, container_id))
    host = '%s/%d' % (ip, 32 if ip.version == 4 else 128)
    mcast = MULTICAST_V4 if ip.version == 4 else 'ff00::/8'
    return chain, [
        '-A POSTROUTING -s %s -m comment --comment %s -j %s' % (host, c, chain),
        '-A %s -d %s -m comment --comment %s -j ACCEPT' % (chain, subnet, c),
        '-A %s ! -d %s -m comment --comment %s -j MASQUERADE' % (chain, mcast, c),
    ]


# --------------------------------------------------------------------------- iptables
def system_iptables():
    """The iptables backend veth_net uses: the host's iptables-save / iptables-restore (as the CNI
    bridge plugin does), through the one wrapper _iptables.Backend."""
    return _iptables.Backend.system(_iptables.which('iptables-save') or 'iptables-save',
                                    _iptables.which('iptables-restore') or 'iptables-restore',
                                    _iptables.which('iptables') or 'iptables')


def save_nat(ipt):
    """The nat table as iptables-save prints it ('' when iptables is not installed)."""
    if _iptables.which(ipt.save_cmd) is None:
        return ''
    return ipt.save('nat')


def owned_nat(save_text, network, container_id):
    """(chain exists, [owned rule lines]) for this pod in iptables-save -t nat output."""
    chain = chain_name(network, container_id)
    tag = '--comment %s ' % _save_quote(masq_comment(network, container_id))
    exists = False
    lines = []
    for line in save_text.splitlines():
        if line.startswith(':%s ' % chain):
            exists = True
        elif line.startswith('-A ') and (tag in line or line.startswith('-A %s ' % chain)):
            lines.append(line)
    return exists, lines


def masq_owners(save_text, network):
    """Container ids that have masquerade rules of this network in POSTROUTING."""
    prefix = '--comment %s' % _save_quote(masq_comment(network, '\0'))
    head = prefix.split('\0')[0]
    tail = prefix.split('\0')[1]
    out = []
    for line in save_text.splitlines():
        if not line.startswith('-A POSTROUTING ') or head not in line:
            continue
        rest = line.split(head, 1)[1]
        if tail in rest:
            cid = rest.split(tail, 1)[0]
            if '\\' not in cid and '"' not in cid:
                out.append(cid)
    return out


def masq_batch(want, have, chain, chain_exists):
    """One iptables-restore batch turning `have` into `want` (None removes the chain)."""
    out = ['*nat', ':%s - [0:0]' % chain]  # declaring a chain flushes it under --noflush
    for line in have:
        if line.startswith('-A POSTROUTING '):
            out.append('-D' + line[2:])
    if want is None:
        out.append('-X %s' % chain)
    else:
        out.extend(want)
    out.append('COMMIT')
    return '\n'.join(out) + '\n'


# --------------------------------------------------------------------------- spec
def _opt(params, key, default=None):
    v = params.get(key)
    return default if v is None else v


class Spec(object):
    """Validated, normalised parameters (raises BarepodError before anything changes)."""

    def __init__(self, params):
        self.state = _opt(params, 'state', 'present')
        # no uid with state=present: only the node side (bridge with the gateway, ip_forward), for a
        # node that has no pod yet
        self.bridge_only = self.state == 'present' and params.get('pod_uid') is None
        self.uid = validate_uid('pod_uid', params.get('pod_uid')) if not self.bridge_only else None
        self.container_id = _opt(params, 'container_id', self.uid) if not self.bridge_only else ''
        if not self.bridge_only and (not self.container_id.strip() or '\n' in self.container_id
                                     or '\r' in self.container_id):
            raise BarepodError('must be a non-empty single line', field='container_id', value=self.container_id)
        self.namespace = params.get('namespace')
        self.name = params.get('name')
        if bool(self.namespace) != bool(self.name):
            raise BarepodError('namespace and name must be given together', field='name', value=self.name)
        self.state_root = _opt(params, 'state_root', _defaults.STATE_ROOT)
        self.network = _ipam.validate_network_name('network', _opt(params, 'network', _defaults.NETWORK))
        self.data_dir = _opt(params, 'data_dir', _defaults.CNI_DATA_DIR)
        self.bridge = validate_ifname('bridge', _opt(params, 'bridge', _defaults.BRIDGE))
        self.ifname = validate_ifname('ifname', _opt(params, 'ifname', _defaults.IFNAME))
        self.host_ifname = (validate_ifname('host_ifname', _opt(params, 'host_ifname', host_ifname_for(self.uid)))
                            if not self.bridge_only else None)
        mtu = _opt(params, 'mtu', _defaults.MTU)
        if not isinstance(mtu, int) or not 68 <= mtu <= 65535:
            raise BarepodError('MTU %r is outside 68..65535' % (mtu,), field='mtu', value=mtu)
        self.mtu = mtu
        self.hairpin = bool(_opt(params, 'hairpin_mode', True))
        self.ip_masq = bool(_opt(params, 'ip_masq', True))
        self.ip_forward = bool(_opt(params, 'ip_forward', True))
        self.gc = bool(_opt(params, 'gc', False))
        self.netns = params.get('netns')
        if self.netns is not None and not os.path.isabs(self.netns):
            raise BarepodError('must be an absolute path', field='netns', value=self.netns)
        self.subnet = None
        self.range = None
        self.requested = None
        if self.state == 'present':
            if not params.get('subnet'):
                raise BarepodError('is required with state=present', field='subnet', value=None)
            self.range = _ipam.Range(_ipam.parse_subnet('subnet', params['subnet']),
                                     params.get('range_start'), params.get('range_end'),
                                     params.get('gateway'))
            self.subnet = self.range.subnet
            if self.subnet.version != 4:
                raise BarepodError('only IPv4 pod CIDRs are supported', field='subnet', value=params['subnet'])
            if params.get('ip'):
                self.requested = _ipam.parse_ip('ip', params['ip'])
                if not self.range.contains(self.requested):
                    raise BarepodError('%s is not in range %r of %s' % (self.requested, self.range, self.subnet),
                                       field='ip', value=params['ip'])
        self.record = PodRecord(self.namespace, self.name, self.state_root) if self.namespace else None
        if self.bridge_only and (self.record is not None or self.netns or params.get('ip')):
            raise BarepodError('is required to attach a pod (namespace/name, netns or ip given); without it '
                               'only the node bridge is converged', field='pod_uid', value=None)

    def resolve_netns(self):
        if self.netns:
            return self.netns
        if self.record is not None:
            rec = self.record.load()
            for sec in ('sandbox', 'network'):
                s = rec.get(sec) or {}
                for key in ('netns_path', 'netns'):
                    if isinstance(s.get(key), str) and s[key].startswith('/'):
                        return s[key]
        return netns_path(self.uid)


# --------------------------------------------------------------------------- observe
def observe_node(ipr, spec, proc_root='/proc'):
    bridge = nl.get_link(ipr, spec.bridge)
    if bridge is not None:
        bridge['addresses'] = nl.addresses(ipr, bridge['index'], family=2)
    host = nl.get_link(ipr, spec.host_ifname)
    return dict(bridge=bridge, host=host, ip_forward=nl.get_sysctl('net.ipv4.ip_forward', proc_root))


def observe_pod(pipr, spec):
    if pipr is None:
        return None
    eth = nl.get_link(pipr, spec.ifname)
    if eth is not None:
        eth['addresses'] = nl.addresses(pipr, eth['index'], family=2)
    lo = nl.get_link(pipr, 'lo')
    default = [r for r in nl.routes(pipr) if r['dst'] == '0.0.0.0/0']
    return dict(eth=eth, lo_up=bool(lo and lo['up']), default_routes=default)


def paired(host, eth):
    """host veth and pod eth0 are the two ends of one pair."""
    return (host is not None and eth is not None and host['kind'] == 'veth'
            and host['link'] == eth['index'] and eth['link'] == host['index'])


def summary(node, pod, ip=None, masq=None):
    """A stable, JSON-friendly picture for --diff."""
    b = node.get('bridge')
    h = node.get('host')
    e = (pod or {}).get('eth')
    return dict(
        bridge=None if b is None else dict(name=b['ifname'], up=b['up'], mtu=b['mtu'], addresses=b['addresses']),
        host_veth=None if h is None else dict(name=h['ifname'], up=h['up'], mtu=h['mtu'],
                                              master=h['master'], hairpin=h['hairpin']),
        pod_interface=None if e is None else dict(name=e['ifname'], up=e['up'], mtu=e['mtu'],
                                                  addresses=e['addresses']),
        default_route=[r['gateway'] for r in (pod or {}).get('default_routes', [])],
        ip_forward=node.get('ip_forward'),
        ip=None if ip is None else str(ip),
        masquerade=masq,
    )


# --------------------------------------------------------------------------- manager
class VethNet(Manager):
    """veth_net: the pod's veth pair on the node bridge, its address, routes and masquerade rules.
    iptables: an _iptables.Backend (default: the host's iptables binaries, see system_iptables)."""

    def __init__(self, params, check_mode=False, diff=False, proc_root='/proc', iptables=None):
        super().__init__(params, check_mode, diff)
        self.spec = Spec(params)
        self.proc_root = proc_root
        self.ipt = iptables or system_iptables()
        self.actions = Actions(check_mode)
        self.before = {}
        self.after = {}
        self.result = {}

    def run(self):
        nl.require_pyroute2()
        if self.spec.bridge_only:
            self.bridge_present()
        elif self.spec.state == 'present':
            self.present()
        else:
            self.absent()
        if self.spec.gc:
            self.collect_garbage()
        facts = dict(self.result)
        facts.pop('actions', None)
        return result(self.changed, self.actions.planned, dict(before=self.before, after=self.after), **facts)

    @property
    def changed(self):
        return bool(self.actions)

    # ---------------------------------------------------------------- present
    def present(self):
        spec = self.spec
        if spec.record is not None:
            owner = spec.record.load().get('uid')
            if owner not in (None, spec.uid):
                raise BarepodError('pod %s already exists with uid %s, not %s' % (spec.record.key, owner, spec.uid),
                                   field='pod_uid', value=spec.uid)
        ns = spec.resolve_netns()
        ns_exists = nl.is_netns(ns)
        if not ns_exists and not self.check_mode:
            raise BarepodError('network namespace %s does not exist' % ns, field='netns', value=ns)
        # check mode before the sandbox exists (a first bring-up checked as a whole): the netns is
        # what the sandbox step would create, so the whole attachment is planned against an empty one
        store = _ipam.Store(spec.network, spec.data_dir)
        alloc = _ipam.Allocator(store, _ipam.RangeSet([spec.range]))
        ipr = nl.open_ipr()
        pipr = nl.open_ipr(ns) if ns_exists else None
        try:
            node = observe_node(ipr, spec, self.proc_root)
            pod = observe_pod(pipr, spec) if pipr is not None else dict(eth=None, lo_up=False, default_routes=[])
            ip, rng, new = alloc.peek(spec.container_id, spec.ifname, spec.requested)
            stale = alloc.stale(spec.container_id, spec.ifname)
            held = [a for a in store.get_by_id(spec.container_id, spec.ifname) if alloc.rangeset.contains(a)]
            other = [a for a in held if a != ip]
            have_masq = owned_nat(save_nat(self.ipt), spec.network, spec.container_id)
            self.before = summary(node, pod, held[0] if held else None, have_masq[1] or None)
            fresh = not held and not stale  # a first attachment: undone entirely if it fails
            if not self.check_mode and (new or stale or other):
                # reserve for real first, so every later step uses the address we hold
                ip, rng, new = alloc.allocate(spec.container_id, spec.ifname, spec.requested)
            if new:
                self.actions.add('reserve', '%s/%s' % (store.dir, ip), ip=str(ip))
            for a in stale + other:
                self.actions.add('release', '%s/%s' % (store.dir, a), fn=self._releaser(store, a), ip=str(a))
            try:
                if new and not self.check_mode:
                    failpoint('ipam-after-reserve')  # the address file was just written
                self._plan_links(ipr, pipr, ns, node, pod, ip, rng)
                want_masq = None
                exists, have = have_masq
                if spec.ip_masq:
                    chain, want_masq = masq_rules(spec.network, spec.container_id, ip, spec.subnet)
                    if not exists or sorted(have) != sorted(want_masq):
                        text = masq_batch(want_masq, have, chain, exists)
                        self.actions.add('masquerade', chain, fn=lambda t=text: self.ipt.restore(t), rules=want_masq)
                elif exists or have:
                    chain = chain_name(spec.network, spec.container_id)
                    text = masq_batch(None, have, chain, exists)
                    self.actions.add('remove masquerade', chain, fn=lambda t=text: self.ipt.restore(t))
                self.actions.run()
                mac = (pod.get('eth') or {}).get('mac')
                if self.actions and not self.check_mode:
                    eth = nl.get_link(pipr, spec.ifname)
                    mac = eth['mac'] if eth else None
                self._record(ns, ip, rng, mac)
            except BaseException:
                if fresh and new and not self.check_mode:
                    self._rollback(ipr, alloc)
                raise
            # what the plan converged to (re-reading everything would double the netlink calls)
            self.after = self._desired_summary(node, ip, rng, want_masq)
            self.result.update(
                ip=str(ip), cidr='%s/%d' % (ip, spec.subnet.prefixlen), gateway=str(rng.gateway),
                subnet=str(spec.subnet), mac=mac, host_ifname=spec.host_ifname,
                ifname=spec.ifname, bridge=spec.bridge, netns=ns, network=spec.network,
                chain=chain_name(spec.network, spec.container_id) if spec.ip_masq else None,
                actions=self.actions.planned)
        finally:
            if pipr is not None:
                pipr.close()
            ipr.close()

    def bridge_present(self):
        """Only the node side: the bridge with the gateway address of the pod CIDR, up, ip_forward."""
        spec = self.spec
        rng = spec.range
        gw_cidr = '%s/%d' % (rng.gateway, spec.subnet.prefixlen)
        ipr = nl.open_ipr()
        try:
            b = nl.get_link(ipr, spec.bridge)
            if b is not None:
                b['addresses'] = nl.addresses(ipr, b['index'], family=2)
            node = dict(bridge=b, host=None, ip_forward=nl.get_sysctl('net.ipv4.ip_forward', self.proc_root))

            def idx(handle, name):
                link = nl.get_link(handle, name)
                if link is None:
                    raise BarepodError('interface %s vanished while being configured' % name)
                return link['index']

            self.before = dict(bridge=bool(b), bridge_addresses=sorted((b or {}).get('addresses') or []),
                               ip_forward=node['ip_forward'])
            self._plan_bridge(ipr, node, gw_cidr, idx, lambda fn: fn)
            self.actions.run()
            self.after = dict(bridge=True, bridge_addresses=sorted(set(self.before['bridge_addresses']) | {gw_cidr}),
                              ip_forward='1' if spec.ip_forward else node['ip_forward'])
            self.result.update(gateway=str(rng.gateway), subnet=str(spec.subnet), bridge=spec.bridge,
                               actions=self.actions.planned)
        finally:
            ipr.close()

    def _rollback(self, ipr, alloc):
        """Undo a fresh attachment that failed half-way: no veth, rules or address left behind.
        Best effort: the original error is what the user needs to see."""
        spec = self.spec
        steps = (
            lambda: nl.delete_link(ipr, spec.host_ifname),
            lambda: self.ipt.restore(masq_batch(None, *self._owned_for_rollback())),
            lambda: alloc.release(spec.container_id, spec.ifname),
        )
        for step in steps:
            try:
                step()
            except Exception:  # pylint: disable=broad-except
                pass

    def _owned_for_rollback(self):
        spec = self.spec
        exists, have = owned_nat(save_nat(self.ipt), spec.network, spec.container_id)
        return have, chain_name(spec.network, spec.container_id), exists

    def _desired_summary(self, node, ip, rng, want_masq):
        spec = self.spec
        plen = spec.subnet.prefixlen
        gw_cidr = '%s/%d' % (rng.gateway, plen)
        b = node.get('bridge')
        baddrs = sorted(set((b or {}).get('addresses', [])) | set([gw_cidr]))
        return dict(
            bridge=dict(name=spec.bridge, up=True, mtu=b['mtu'] if b else spec.mtu, addresses=baddrs),
            host_veth=dict(name=spec.host_ifname, up=True, mtu=spec.mtu,
                           master=b['index'] if b else None, hairpin=spec.hairpin),
            pod_interface=dict(name=spec.ifname, up=True, mtu=spec.mtu, addresses=['%s/%d' % (ip, plen)]),
            default_route=[str(rng.gateway)],
            ip_forward='1' if spec.ip_forward else node.get('ip_forward'),
            ip=str(ip), masquerade=want_masq)

    def _releaser(self, store, addr):
        def fn():
            with store.lock():
                store.release_ip(addr)
        return fn

    def _plan_links(self, ipr, pipr, ns, node, pod, ip, rng):
        spec = self.spec
        gw_cidr = '%s/%d' % (rng.gateway, spec.subnet.prefixlen)
        pod_cidr = '%s/%d' % (ip, spec.subnet.prefixlen)

        # ifindexes, looked up once: seeded from what was observed, forgotten when a link is
        # (re)created or deleted
        known = {}
        if node['bridge'] is not None:
            known[(id(ipr), spec.bridge)] = node['bridge']['index']
        if paired(node['host'], pod['eth']):
            known[(id(ipr), spec.host_ifname)] = node['host']['index']
            known[(id(pipr), spec.ifname)] = pod['eth']['index']

        def idx(handle, name):
            key = (id(handle), name)
            if key not in known:
                link = nl.get_link(handle, name)
                if link is None:
                    raise BarepodError('interface %s vanished while being configured' % name)
                known[key] = link['index']
            return known[key]

        def forget(fn):
            def run():
                try:
                    return fn()
                finally:
                    known.clear()
            return run

        self._plan_bridge(ipr, node, gw_cidr, idx, forget)

        # the veth pair: host side here, eth0 in the pod
        self._plan_veth(ipr, pipr, ns, node, pod, ip, pod_cidr, rng, idx, forget)

    def _plan_bridge(self, ipr, node, gw_cidr, idx, forget):
        spec = self.spec
        add = self.actions.add
        # bridge (cni0) with the gateway address, up, MTU
        b = node['bridge']
        if b is None:
            add('create bridge', spec.bridge, fn=forget(lambda: nl.create_bridge(ipr, spec.bridge, spec.mtu)))
        elif b['kind'] != 'bridge':
            raise BarepodError('%s exists and is a %s, not a bridge' % (spec.bridge, b['kind']),
                               field='bridge', value=spec.bridge)
        if b is None or gw_cidr not in b['addresses']:
            add('add address', spec.bridge, address=gw_cidr,
                fn=lambda: nl.add_address(ipr, idx(ipr, spec.bridge), gw_cidr))
        if b is None or not b['up']:
            add('set up', spec.bridge, fn=lambda: nl.set_link(ipr, idx(ipr, spec.bridge), state='up'))
        if spec.ip_forward and node['ip_forward'] != '1':
            add('sysctl', 'net.ipv4.ip_forward', value='1',
                fn=lambda: nl.set_sysctl('net.ipv4.ip_forward', 1, self.proc_root))

    def _plan_veth(self, ipr, pipr, ns, node, pod, ip, pod_cidr, rng, idx, forget):
        spec = self.spec
        add = self.actions.add
        b = node['bridge']
        h = node['host']
        e = pod['eth']
        if h is not None and h['kind'] != 'veth':
            raise BarepodError('%s exists and is not a veth' % spec.host_ifname,
                               field='host_ifname', value=spec.host_ifname)
        if not paired(h, e):
            if e is not None:
                add('delete stale interface', '%s:%s' % (ns, spec.ifname),
                    fn=forget(lambda: nl.delete_link(pipr, spec.ifname)))
            if h is not None:
                add('delete stale veth', spec.host_ifname,
                    fn=forget(lambda: nl.delete_link(ipr, spec.host_ifname)))
            add('create veth', spec.host_ifname, peer='%s:%s' % (ns, spec.ifname), mtu=spec.mtu,
                master=spec.bridge, state='up',
                fn=forget(lambda: nl.create_veth(ipr, spec.host_ifname, spec.ifname, ns, spec.mtu,
                                                 master=idx(ipr, spec.bridge), up=True)))
            h = e = None
        # host side: mtu, master, up (one RTM_SETLINK), then hairpin on the bridge port
        changes = {}
        if h is not None:
            if h['mtu'] != spec.mtu:
                changes['mtu'] = spec.mtu
            if b is None or h['master'] != b['index']:
                changes['master'] = spec.bridge
            if not h['up']:
                changes['state'] = 'up'
        if changes:
            def set_host():
                kw = dict(changes)
                if 'master' in kw:
                    kw['master'] = idx(ipr, spec.bridge)
                nl.set_link(ipr, idx(ipr, spec.host_ifname), **kw)
            for key in sorted(changes):
                add({'mtu': 'set mtu', 'master': 'set master', 'state': 'set up'}[key], spec.host_ifname,
                    fn=set_host if key == sorted(changes)[0] else None, **{key: changes[key]})
        if h is None or bool(h['hairpin']) != spec.hairpin:
            add('set hairpin', spec.host_ifname, hairpin=spec.hairpin,
                fn=lambda: nl.set_hairpin(ipr, idx(ipr, spec.host_ifname), spec.hairpin))

        # pod side: lo up, eth0 mtu + address + up, default route via the gateway
        if not pod['lo_up']:
            add('set up', '%s:lo' % ns, fn=lambda: nl.set_link(pipr, idx(pipr, 'lo'), state='up'))
        if e is not None and e['mtu'] != spec.mtu:
            add('set mtu', '%s:%s' % (ns, spec.ifname), mtu=spec.mtu,
                fn=lambda: nl.set_link(pipr, idx(pipr, spec.ifname), mtu=spec.mtu))
        have_addrs = e['addresses'] if e is not None else []
        for a in have_addrs:
            if a != pod_cidr:
                add('delete address', '%s:%s' % (ns, spec.ifname), address=a,
                    fn=lambda a=a: nl.del_address(pipr, idx(pipr, spec.ifname), a))
        if pod_cidr not in have_addrs:
            add('add address', '%s:%s' % (ns, spec.ifname), address=pod_cidr,
                fn=lambda: failpoint('veth-before-address') or nl.add_address(pipr, idx(pipr, spec.ifname), pod_cidr))
        if e is None or not e['up']:
            add('set up', '%s:%s' % (ns, spec.ifname),
                fn=lambda: nl.set_link(pipr, idx(pipr, spec.ifname), state='up'))
        gw = str(rng.gateway)
        defaults = pod['default_routes']
        ok = (e is not None and len(defaults) == 1 and defaults[0]['gateway'] == gw
              and defaults[0]['oif'] == e['index'])
        if not ok:
            add('set default route', ns, gateway=gw,
                fn=lambda: nl.add_route(pipr, '0.0.0.0/0', gateway=gw, oif=idx(pipr, spec.ifname),
                                        proto=nl.RTPROT_BOOT, replace=True))

    def _record(self, ns, ip, rng, mac):
        spec = self.spec
        if spec.record is None:
            return
        section = dict(ip=str(ip), cidr='%s/%d' % (ip, spec.subnet.prefixlen), gateway=str(rng.gateway),
                       subnet=str(spec.subnet), mac=mac, host_ifname=spec.host_ifname,
                       ifname=spec.ifname, bridge=spec.bridge, netns=ns, network=spec.network,
                       container_id=spec.container_id,
                       chain=chain_name(spec.network, spec.container_id) if spec.ip_masq else None)
        cur = spec.record.load()
        if cur.get('network') == section and cur.get('uid') == spec.uid:
            return
        self.actions.add('record', spec.record.record_path, section='network')
        if not self.check_mode:
            spec.record.update('network', section, uid=spec.uid)

    # ---------------------------------------------------------------- absent
    def absent(self):
        spec = self.spec
        store = _ipam.Store(spec.network, spec.data_dir)
        ipr = nl.open_ipr()
        try:
            host = nl.get_link(ipr, spec.host_ifname)
            ns = spec.resolve_netns()
            pod_eth = None
            pipr = None
            if nl.is_netns(ns):
                pipr = nl.open_ipr(ns)
                pod_eth = nl.get_link(pipr, spec.ifname)
            try:
                held = store.get_by_id(spec.container_id, spec.ifname)
                save = save_nat(self.ipt)
                exists, have = owned_nat(save, spec.network, spec.container_id)
                self.before = dict(host_veth=spec.host_ifname if host else None,
                                   pod_interface=spec.ifname if pod_eth else None,
                                   ips=[str(a) for a in held], masquerade=have if exists else None)
                self.after = dict(host_veth=None, pod_interface=None, ips=[], masquerade=None)
                if pod_eth is not None and paired(host, pod_eth):
                    add_target = '%s:%s' % (ns, spec.ifname)
                    self.actions.add('delete veth', add_target, fn=lambda: nl.delete_link(pipr, spec.ifname))
                    self.actions.add('delete veth', spec.host_ifname,
                                     fn=lambda: nl.delete_link(ipr, spec.host_ifname))
                elif host is not None:
                    self.actions.add('delete veth', spec.host_ifname,
                                     fn=lambda: nl.delete_link(ipr, spec.host_ifname))
                if held:
                    self.actions.add('release', store.dir, ips=[str(a) for a in held],
                                     fn=lambda: _ipam.Allocator(store, _ipam.RangeSet()).release(
                                         spec.container_id, spec.ifname))
                if exists or have:
                    chain = chain_name(spec.network, spec.container_id)
                    text = masq_batch(None, have, chain, exists)
                    self.actions.add('remove masquerade', chain, fn=lambda: self.ipt.restore(text))
                if spec.record is not None and spec.record.exists() and \
                        spec.record.load().get('network') is not None:
                    self.actions.add('record', spec.record.record_path, section='network',
                                     fn=lambda: spec.record.update('network', None))
                self.actions.run()
            finally:
                if pipr is not None:
                    pipr.close()
            self.result.update(host_ifname=spec.host_ifname, netns=ns, released=[str(a) for a in held],
                               actions=self.actions.planned)
        finally:
            ipr.close()

    # ---------------------------------------------------------------- gc
    def collect_garbage(self):
        """Release allocations whose pod is gone: no host veth for it and no pod record."""
        spec = self.spec
        store = _ipam.Store(spec.network, spec.data_dir)
        uids = set()
        for rec in list_records(spec.state_root):
            uids.add(rec.get('uid'))
            uids.add((rec.get('network') or {}).get('container_id'))
        ipr = nl.open_ipr()
        try:
            links = set(link['ifname'] for link in nl.list_links(ipr))
        finally:
            ipr.close()

        def alive(cid, ifname):
            if spec.state == 'present' and cid == spec.container_id:
                return True
            return cid in uids or host_ifname_for(cid) in links

        dead = _ipam.garbage(store, alive)
        for addr, cid in dead:
            self.actions.add('release', '%s/%s' % (store.dir, addr), ip=str(addr), owner=cid)
        if dead and not self.check_mode:
            with store.lock():
                for addr, cid in dead:
                    if store.allocations().get(addr, (None,))[0] == cid:
                        store.release_ip(addr)
        # masquerade chains of this network left behind by pods that are gone
        save = save_nat(self.ipt)
        dead_ids = sorted(set(cid for cid in masq_owners(save, spec.network) if not alive(cid, None)))
        for cid in dead_ids:
            exists, have = owned_nat(save, spec.network, cid)
            chain = chain_name(spec.network, cid)
            self.actions.add('remove masquerade', chain, owner=cid)
            if not self.check_mode:
                self.ipt.restore(masq_batch(None, have, chain, exists))
        self.result['collected'] = [str(addr) for addr, owner in dead]
        self.result['collected_chains'] = [chain_name(spec.network, cid) for cid in dead_ids]
