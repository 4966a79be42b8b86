# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Routes to the other nodes' pod CIDRs, as kindnet sets them (node_routes), over netlink.

Each route is `<pod CIDR> via <node IP>`, tagged with the route protocol RTPROT_BAREPOD so that
the module owns exactly the routes it made: any tagged route no longer wanted is removed.
"""

from __future__ import annotations

import ipaddress

from ansible_collections.barepod.linux.plugins.module_utils._common import Actions, BarepodError, Manager, result
from ansible_collections.barepod.linux.plugins.module_utils import _ipam
from ansible_collections.barepod.linux.plugins.module_utils import _netlink as nl


class NodeRoutes(Manager):
    """kindnet-style routes: every other node's pod CIDR via that node's address.

    Routes are tagged with protocol RTPROT_BAREPOD; any tagged route that is not wanted any
    more (a node left the list) is removed. A node whose node_ip is a local address of this
    namespace (or whose name is `node_name`) is this node and gets no route.
    """

    def __init__(self, params, check_mode=False, diff=False):
        super().__init__(params, check_mode, diff)
        self.state = params.get('state') or 'present'
        self.node_name = params.get('node_name')
        self.nodes = []
        seen = set()
        for i, n in enumerate(params.get('nodes') or []):
            field = 'nodes[%d]' % i
            if not isinstance(n, dict) or not n.get('pod_cidr') or not n.get('node_ip'):
                raise BarepodError('each node needs pod_cidr and node_ip, got %r' % (n,), field=field, value=n)
            try:
                cidr = ipaddress.ip_network(n['pod_cidr'], strict=True)
            except ValueError as e:
                raise BarepodError('pod_cidr %r is not a valid CIDR: %s' % (n['pod_cidr'], e),
                                   field=field + '.pod_cidr', value=n['pod_cidr'])
            node_ip = _ipam.parse_ip(field + '.node_ip', n['node_ip'])
            if cidr.version != 4 or node_ip.version != 4:
                raise BarepodError('only IPv4 is supported', field=field, value=n)
            if cidr in seen:
                raise BarepodError('pod_cidr %s is listed twice' % cidr, field=field + '.pod_cidr', value=str(cidr))
            seen.add(cidr)
            self.nodes.append(dict(name=n.get('name'), pod_cidr=str(cidr), node_ip=str(node_ip)))
        self.actions = Actions(check_mode)
        self.before = self.after = None

    def run(self):
        ipr = nl.open_ipr()
        try:
            local = nl.local_addresses(ipr)
            want = {}
            if self.state == 'present':
                for n in self.nodes:
                    if n['node_ip'] in local or (self.node_name and n['name'] == self.node_name):
                        continue
                    want[n['pod_cidr']] = n['node_ip']
            have = {}
            for r in nl.routes(ipr, proto=nl.RTPROT_BAREPOD):
                have.setdefault(r['dst'], []).append(r['gateway'])
            for dst, gws in sorted(have.items()):
                if dst not in want or gws != [want[dst]]:
                    for gw in gws:
                        self.actions.add('delete route', dst, gateway=gw,
                                         fn=lambda d=dst, g=gw: nl.del_route(ipr, d, gateway=g,
                                                                             proto=nl.RTPROT_BAREPOD))
            for dst, gw in sorted(want.items()):
                if have.get(dst) != [gw]:
                    self.actions.add('add route', dst, gateway=gw,
                                     fn=lambda d=dst, g=gw: nl.add_route(ipr, d, gateway=g,
                                                                         proto=nl.RTPROT_BAREPOD))
            self.actions.run()
            self.before = dict(routes=dict((d, g[0] if len(g) == 1 else g) for d, g in sorted(have.items())))
            self.after = dict(routes=dict(sorted(want.items())))
            return result(self.actions, self.actions.planned, dict(before=self.before, after=self.after),
                          routes=[dict(dst=d, gateway=g) for d, g in sorted(want.items())])
        finally:
            ipr.close()

    @property
    def changed(self):
        return bool(self.actions)
