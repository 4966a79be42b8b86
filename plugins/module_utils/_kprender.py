# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kube-proxy's iptables mode, as a pure function of Services and EndpointSlices.

render(objects, settings) returns a Ruleset: per table ("filter", "nat") an ordered mapping
chain -> rules, plus the jump rules from the built-in chains. Every rule is held in two
spellings built from the same pieces in one pass:

- ``kp``: exactly what kube-proxy's syncProxyRules writes into its iptables-restore input
  (argument order, quoting, "%0.10f" probabilities, ``--or-mark``), used for the returned
  payload and compared verbatim with kube-proxy's own golden dumps (proxier_test.go);
- ``saved``: how iptables-save prints that rule back (``-d 10.0.0.1/32 -p tcp`` first,
  ``%.11f`` probabilities, ``--set-xmark``, the recent match's implied options ...), which
  is what the partial sync compares against, chain by chain, to decide what to rewrite.
  Both backends (iptables-nft and iptables-legacy 1.8.x) print the same text.

Behaviour follows kubernetes pkg/proxy/iptables/proxier.go (chain names from
sha256(servicePortName + protocol [+ endpoint]) in base32, first 16 characters), the
EndpointSliceCache (dedupe by ip:port, ready/serving/terminating conditions, endpoints sorted
by "ip:port") and pkg/proxy/topology.go CategorizeEndpoints (Cluster/Local traffic policy,
falling back to serving+terminating endpoints). IPv4 only; topology hints are not used.
"""

from __future__ import annotations

from ansible_collections.barepod.linux.plugins.module_utils._kpmodel import LARGE_CLUSTER_ENDPOINTS_THRESHOLD
from ansible_collections.barepod.linux.plugins.module_utils._kpmodel import categorize_endpoints, load

NFACCT_CT_INVALID = 'ct_state_invalid_dropped_pkts'
NFACCT_LOCALHOST_NP = 'localhost_nps_accepted_pkts'
TABLES = ('filter', 'nat')
BUILTIN_CHAINS = {
    'filter': ('INPUT', 'FORWARD', 'OUTPUT'),
    'nat': ('PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING'),
}
SERVICE_CHAIN_KINDS = ('SVC', 'SVL', 'EXT', 'FW', 'SEP')


def compute_probability(n):
    return '%0.10f' % (1.0 / n)


def saved_probability(kp_probability):
    """libxt_statistic stores lround(p * 2^31) and prints it back with %.11f."""
    v = int(float(kp_probability) * 0x80000000 + 0.5)
    return '%.11f' % (v / float(0x80000000))


def chain_names(prefix):
    """The fixed chains of a ruleset with this prefix (KUBE matches kube-proxy)."""
    return dict(
        services=prefix + '-SERVICES',
        external_services=prefix + '-EXTERNAL-SERVICES',
        nodeports=prefix + '-NODEPORTS',
        postrouting=prefix + '-POSTROUTING',
        mark_masq=prefix + '-MARK-MASQ',
        forward=prefix + '-FORWARD',
        proxy_firewall=prefix + '-PROXY-FIREWALL',
        firewall=prefix + '-FIREWALL',
    )


def is_service_chain(prefix, chain):
    for kind in SERVICE_CHAIN_KINDS:
        if chain.startswith('%s-%s-' % (prefix, kind)):
            return True
    return False


def owned_chains(prefix):
    """table -> set of fixed chain names this ruleset owns (service chains go by prefix)."""
    c = chain_names(prefix)
    filt = {c['services'], c['external_services'], c['forward'], c['nodeports'],
            c['proxy_firewall'], c['firewall']}
    nat = {c['services'], c['nodeports'], c['postrouting'], c['mark_masq']}
    return {'filter': filt, 'nat': nat}


def owns_chain(prefix, table, chain):
    return chain in owned_chains(prefix)[table] or (table == 'nat' and is_service_chain(prefix, chain))


# --------------------------------------------------------------------------- quoting

def kp_comment(text):
    """kube-proxy wraps comments holding spaces in literal double quotes."""
    return '"%s"' % text if ' ' in text else text


def saved_comment(text):
    return '"%s"' % text


def split_rule(line):
    """Split an iptables-save rule into tokens, honouring double quotes."""
    out = []
    i, n = 0, len(line)
    while i < n:
        if line[i] == ' ':
            i += 1
            continue
        if line[i] == '"':
            j = i + 1
            buf = []
            while j < n and line[j] != '"':
                if line[j] == '\\' and j + 1 < n:
                    j += 1
                buf.append(line[j])
                j += 1
            out.append(''.join(buf))
            i = j + 1
        else:
            j = line.find(' ', i)
            if j < 0:
                j = n
            out.append(line[i:j])
            i = j
    return out


# --------------------------------------------------------------------------- the ruleset

class Ruleset(object):
    """table -> {chain: [(kp, saved)]} in output order, plus jump rules from built-in chains."""

    def __init__(self, prefix, on_new=None):
        self.prefix = prefix
        self.chains = {'filter': {}, 'nat': {}}
        self.jumps = []  # (table, builtin chain, kp args, saved args)
        self.services = 0
        self.endpoints = 0
        self.large_cluster_mode = False
        self.on_new = on_new   # on_new(table, chain) as each chain comes into being

    def chain(self, table, name):
        c = self.chains[table].get(name)
        if c is None:
            c = self.chains[table][name] = []
            if self.on_new is not None:
                self.on_new(table, name)
        return c

    def ordered_chains(self, table):
        """kube-proxy's golden-test order: NODEPORTS, SERVICES, then alphabetical."""
        p = self.prefix
        first = [p + '-NODEPORTS', p + '-SERVICES']
        names = self.chains[table]
        head = [c for c in first if c in names]
        return head + sorted(c for c in names if c not in first)

    def saved_rules(self, table, chain):
        return [s for _k, s in self.chains[table][chain]]

    def payload(self):
        """The iptables-restore input kube-proxy would write (chains grouped)."""
        out = []
        for table in TABLES:
            out.append('*' + table)
            order = self.ordered_chains(table)
            for c in order:
                out.append(':%s - [0:0]' % c)
            for c in order:
                for kp, _s in self.chains[table][c]:
                    out.append('-A %s %s' % (c, kp))
            out.append('COMMIT')
        return '\n'.join(out) + '\n'

    def rule_count(self):
        return dict((t, sum(len(r) for r in self.chains[t].values())) for t in TABLES)


def _jump_specs(prefix, localhost_fw):
    c = chain_names(prefix)
    new = ['-m', 'conntrack', '--ctstate', 'NEW']
    specs = [
        ('filter', c['external_services'], 'INPUT', 'kubernetes externally-visible service portals', new),
        ('filter', c['external_services'], 'FORWARD', 'kubernetes externally-visible service portals', new),
        ('filter', c['nodeports'], 'INPUT', 'kubernetes health check service ports', []),
        ('filter', c['services'], 'FORWARD', 'kubernetes service portals', new),
        ('filter', c['services'], 'OUTPUT', 'kubernetes service portals', new),
        ('filter', c['forward'], 'FORWARD', 'kubernetes forwarding rules', []),
        ('filter', c['proxy_firewall'], 'INPUT', 'kubernetes load balancer firewall', new),
        ('filter', c['proxy_firewall'], 'OUTPUT', 'kubernetes load balancer firewall', new),
        ('filter', c['proxy_firewall'], 'FORWARD', 'kubernetes load balancer firewall', new),
        ('nat', c['services'], 'OUTPUT', 'kubernetes service portals', []),
        ('nat', c['services'], 'PREROUTING', 'kubernetes service portals', []),
        ('nat', c['postrouting'], 'POSTROUTING', 'kubernetes postrouting rules', []),
    ]
    if localhost_fw:
        specs += [('filter', c['firewall'], 'INPUT', '', []), ('filter', c['firewall'], 'OUTPUT', '', [])]
    out = []
    for table, dst, src, comment, extra in specs:
        kp = list(extra)
        saved = list(extra)
        if comment:
            kp += ['-m', 'comment', '--comment', kp_comment(comment)]
            saved += ['-m', 'comment', '--comment', saved_comment(comment)]
        kp += ['-j', dst]
        saved += ['-j', dst]
        out.append((table, src, ' '.join(kp), ' '.join(saved)))
    return out


def render(objects, settings, track=None, warnings=None):
    """Services + EndpointSlices -> Ruleset, exactly as kube-proxy's syncProxyRules."""
    svc_ports, endpoints, skipped = load(objects, settings.node_name, warnings=warnings)
    rs = _render(svc_ports, endpoints, settings, track=track)
    rs.skipped = skipped
    return rs


def _render(svc_ports, endpoints_map, st, large=None, track=None, on_new=None):
    """large: force kube-proxy's large-cluster mode (a partial render of some Services must use
    the mode of the whole set). track: a dict filled with what each Service (namespace/name)
    contributes (a Contribution).
    on_new(table, chain): called as each chain is created (see Ruleset)."""
    p = st.chain_prefix
    cn = chain_names(p)
    rs = Ruleset(p, on_new)
    mark, mark_s = st.mark, st.mark_saved
    f_services = rs.chain('filter', cn['services'])
    f_ext = rs.chain('filter', cn['external_services'])
    f_forward = rs.chain('filter', cn['forward'])
    f_nodeports = rs.chain('filter', cn['nodeports'])
    f_pfw = rs.chain('filter', cn['proxy_firewall'])
    n_services = rs.chain('nat', cn['services'])
    n_nodeports = rs.chain('nat', cn['nodeports'])
    n_post = rs.chain('nat', cn['postrouting'])
    n_masq = rs.chain('nat', cn['mark_masq'])
    MASQ = cn['mark_masq']

    n_post.append(('-m mark ! --mark %s/%s -j RETURN' % (mark, mark),
                   '-m mark ! --mark %s/%s -j RETURN' % (mark_s, mark_s)))
    n_post.append(('-j MARK --xor-mark %s' % mark, '-j MARK --set-xmark %s/0x0' % mark_s))
    rf = ' --random-fully' if st.random_fully else ''
    n_post.append(('-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE' + rf,
                   '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE' + rf))
    n_masq.append(('-j MARK --or-mark %s' % mark, '-j MARK --set-xmark %s/%s' % (mark_s, mark_s)))
    if st.localhost_nodeports:
        rs.chain('filter', cn['firewall']).append((
            '-m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 '
            '-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP',
            '! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" '
            '-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP'))

    local_cidr = str(st.cluster_cidr) if st.cluster_cidr else None
    total = 0
    for sp in svc_ports:
        total += len(endpoints_map.get((sp.name_string, sp.protocol), ()))
    if large is None:
        large = total > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
    rs.large_cluster_mode = large
    aggregates = ((f_services, f_ext, f_nodeports, f_pfw), (n_services, n_nodeports))
    nat_chains = rs.chains['nat']
    rs.services = len(svc_ports)
    rs.endpoints = total

    for sp in svc_ports:
        proto = sp.proto
        name = sp.name_string
        cip = sp.cluster_ip
        port = str(sp.port)
        all_eps = endpoints_map.get((name, sp.protocol), [])
        cluster_eps, local_eps, reachable, has_eps = categorize_endpoints(all_eps, sp)
        if track is not None:
            lengths = [[len(c) for c in cs] for cs in aggregates]
        svc_chain = '%s-SVC-%s' % (p, sp.hash)
        svl_chain = '%s-SVL-%s' % (p, sp.hash)
        ext_chain = '%s-EXT-%s' % (p, sp.hash)
        fw_chain = '%s-FW-%s' % (p, sp.hash)
        uses_cluster_chain = bool(cluster_eps) and sp.uses_cluster_endpoints()
        uses_local_chain = bool(local_eps) and sp.uses_local_endpoints()
        internal_chain = svc_chain
        has_internal = has_eps
        if sp.internal_local:
            internal_chain = svl_chain
            if not local_eps:
                has_internal = False
        external_policy_chain = svc_chain
        has_external = has_eps
        if sp.external_local:
            external_policy_chain = svl_chain
            if not local_eps:
                has_external = False
        uses_ext_chain = has_eps and sp.externally_accessible()
        lb_chain = ext_chain
        uses_fw = has_eps and bool(sp.lb_vips) and bool(sp.lb_source_ranges)
        if uses_fw:
            lb_chain = fw_chain

        int_target = int_comment = ext_target = ext_comment = None
        if not has_eps:
            int_target = ext_target = 'REJECT'
            int_comment = ext_comment = '%s has no endpoints' % name
        else:
            if not has_internal:
                int_target, int_comment = 'DROP', '%s has no local endpoints' % name
            if not has_external:
                ext_target, ext_comment = 'DROP', '%s has no local endpoints' % name

        def filter_rule(comment, dst, dport, target, addrtype=False, proto=proto):
            kp_t = target
            sv_t = target + (' --reject-with icmp-port-unreachable' if target == 'REJECT' else '')
            if addrtype:
                return ('-m comment --comment %s -m addrtype --dst-type LOCAL -m %s -p %s --dport %s -j %s'
                        % (kp_comment(comment), proto, proto, dport, kp_t),
                        '-p %s -m comment --comment %s -m addrtype --dst-type LOCAL -m %s --dport %s -j %s'
                        % (proto, saved_comment(comment), proto, dport, sv_t))
            return ('-m comment --comment %s -m %s -p %s -d %s --dport %s -j %s'
                    % (kp_comment(comment), proto, proto, dst, dport, kp_t),
                    '-d %s/32 -p %s -m comment --comment %s -m %s --dport %s -j %s'
                    % (dst, proto, saved_comment(comment), proto, dport, sv_t))

        def dnat_capture(comment, dst, dport, target, proto=proto):
            return ('-m comment --comment %s -m %s -p %s -d %s --dport %s -j %s'
                    % (kp_comment(comment), proto, proto, dst, dport, target),
                    '-d %s/32 -p %s -m comment --comment %s -m %s --dport %s -j %s'
                    % (dst, proto, saved_comment(comment), proto, dport, target))

        # Capture the clusterIP.
        if has_internal:
            n_services.append(dnat_capture(name + ' cluster IP', cip, port, internal_chain))
        else:
            f_services.append(filter_rule(int_comment, cip, port, int_target))
        # Capture externalIPs.
        for eip in sp.external_ips:
            if has_eps:
                n_services.append(dnat_capture(name + ' external IP', eip, port, ext_chain))
            if not has_external:
                f_ext.append(filter_rule(ext_comment, eip, port, ext_target))
        # Capture load-balancer ingress.
        for vip in sp.lb_vips:
            if has_eps:
                n_services.append(dnat_capture(name + ' loadbalancer IP', vip, port, lb_chain))
            if uses_fw:
                f_pfw.append(filter_rule('%s traffic not accepted by %s' % (name, fw_chain), vip, port, 'DROP'))
        if not has_external:
            for vip in sp.lb_vips:
                f_ext.append(filter_rule(ext_comment, vip, port, ext_target))
        # Capture nodeports.
        if sp.node_port:
            npt = str(sp.node_port)
            if has_eps:
                if st.localhost_nodeports and st.nfacct:
                    n_nodeports.append((
                        '-m comment --comment %s -m %s -p %s -d 127.0.0.0/8 --dport %s -m nfacct '
                        '--nfacct-name %s -j %s' % (kp_comment(name), proto, proto, npt, NFACCT_LOCALHOST_NP,
                                                    ext_chain),
                        '-d 127.0.0.0/8 -p %s -m comment --comment %s -m %s --dport %s -m nfacct '
                        '--nfacct-name  %s -j %s' % (proto, saved_comment(name), proto, npt,
                                                     NFACCT_LOCALHOST_NP, ext_chain)))
                n_nodeports.append((
                    '-m comment --comment %s -m %s -p %s --dport %s -j %s'
                    % (kp_comment(name), proto, proto, npt, ext_chain),
                    '-p %s -m comment --comment %s -m %s --dport %s -j %s'
                    % (proto, saved_comment(name), proto, npt, ext_chain)))
            if not has_external:
                f_ext.append(filter_rule(ext_comment, None, npt, ext_target, addrtype=True))
        # Capture healthCheckNodePorts.
        if sp.health_check_node_port:
            c = '%s health check node port' % name
            hp = str(sp.health_check_node_port)
            f_nodeports.append((
                '-m comment --comment %s -m tcp -p tcp --dport %s -j ACCEPT' % (kp_comment(c), hp),
                '-p tcp -m comment --comment %s -m tcp --dport %s -j ACCEPT' % (saved_comment(c), hp)))

        # Internal traffic handling.
        if has_internal:
            c = name + ' cluster IP'
            kp_args = '-m comment --comment %s -m %s -p %s -d %s --dport %s' % (kp_comment(c), proto, proto, cip, port)
            if st.masquerade_all:
                rs.chain('nat', internal_chain).append((
                    kp_args + ' -j ' + MASQ,
                    '-d %s/32 -p %s -m comment --comment %s -m %s --dport %s -j %s'
                    % (cip, proto, saved_comment(c), proto, port, MASQ)))
            elif local_cidr:
                rs.chain('nat', internal_chain).append((
                    kp_args + ' ! -s %s -j %s' % (local_cidr, MASQ),
                    '! -s %s -d %s/32 -p %s -m comment --comment %s -m %s --dport %s -j %s'
                    % (local_cidr, cip, proto, saved_comment(c), proto, port, MASQ)))

        # External traffic handling.
        if uses_ext_chain:
            ext = rs.chain('nat', ext_chain)
            if not sp.external_local:
                c = 'masquerade traffic for %s external destinations' % name
                ext.append(('-m comment --comment %s -j %s' % (kp_comment(c), MASQ),
                            '-m comment --comment %s -j %s' % (saved_comment(c), MASQ)))
            else:
                if local_cidr:
                    c = 'pod traffic for %s external destinations' % name
                    ext.append(('-m comment --comment %s -s %s -j %s' % (kp_comment(c), local_cidr, svc_chain),
                                '-s %s -m comment --comment %s -j %s' % (local_cidr, saved_comment(c), svc_chain)))
                c = 'masquerade LOCAL traffic for %s external destinations' % name
                ext.append(('-m comment --comment %s -m addrtype --src-type LOCAL -j %s' % (kp_comment(c), MASQ),
                            '-m comment --comment %s -m addrtype --src-type LOCAL -j %s'
                            % (saved_comment(c), MASQ)))
                c = 'route LOCAL traffic for %s external destinations' % name
                ext.append(('-m comment --comment %s -m addrtype --src-type LOCAL -j %s' % (kp_comment(c), svc_chain),
                            '-m comment --comment %s -m addrtype --src-type LOCAL -j %s'
                            % (saved_comment(c), svc_chain)))
            if has_external:
                ext.append(('-j ' + external_policy_chain, '-j ' + external_policy_chain))

        # Firewall chain.
        if uses_fw:
            fw = rs.chain('nat', fw_chain)
            c = '%s loadbalancer IP' % name
            allow_from_node = False
            for cidr in sp.lb_source_ranges:
                fw.append(('-m comment --comment %s -s %s -j %s' % (kp_comment(c), cidr, ext_chain),
                           '-s %s -m comment --comment %s -j %s' % (cidr, saved_comment(c), ext_chain)))
                if st.node_ip is not None and st.node_ip in cidr:
                    allow_from_node = True
            if allow_from_node:
                for vip in sp.lb_vips:
                    fw.append(('-m comment --comment %s -s %s -j %s' % (kp_comment(c), vip, ext_chain),
                               '-s %s/32 -m comment --comment %s -j %s' % (vip, saved_comment(c), ext_chain)))
            c = 'other traffic to %s will be dropped by %s' % (name, cn['proxy_firewall'])
            fw.append(('-m comment --comment %s' % kp_comment(c), '-m comment --comment %s' % saved_comment(c)))

        if uses_cluster_chain:
            _service_to_endpoints(rs, sp, svc_chain, cluster_eps, large)
        if uses_local_chain:
            _service_to_endpoints(rs, sp, svl_chain, local_eps, large)

        # Per-endpoint chains.
        for e in reachable:
            sep = '%s-SEP-%s' % (p, e.chain_hash)
            chain = rs.chain('nat', sep)
            kc = '' if large else ' -m comment --comment %s' % kp_comment(name)
            sc = '' if large else ' -m comment --comment %s' % saved_comment(name)
            chain.append(('%s -s %s -j %s' % (kc, e.ip, MASQ), '-s %s/32%s -j %s' % (e.ip, sc, MASQ)))
            if sp.affinity_timeout:
                chain.append((
                    '%s -m recent --name %s --set -m %s -p %s -j DNAT --to-destination %s'
                    % (kc, sep, proto, proto, e.string),
                    '-p %s%s -m recent --set --name %s --mask 255.255.255.255 --rsource -m %s -j DNAT '
                    '--to-destination %s' % (proto, sc, sep, proto, e.string)))
            else:
                chain.append(('%s -m %s -p %s -j DNAT --to-destination %s' % (kc, proto, proto, e.string),
                              '-p %s%s -m %s -j DNAT --to-destination %s' % (proto, sc, proto, e.string)))
            chain[-2] = (chain[-2][0].lstrip(), chain[-2][1].lstrip())
            chain[-1] = (chain[-1][0].lstrip(), chain[-1][1].lstrip())

        if track is not None:
            _track(track, sp, aggregates, lengths, nat_chains, all_eps, reachable,
                   (svc_chain, svl_chain, ext_chain, fw_chain))

    # Tail-call to the nodeports chain: after all other service portal rules.
    c = 'kubernetes service nodeports; NOTE: this must be the last rule in this chain'
    if st.nodeport_match_all():
        if st.localhost_nodeports:
            n_services.append(('-m comment --comment %s -m addrtype --dst-type LOCAL -j %s'
                               % (kp_comment(c), cn['nodeports']),
                               '-m comment --comment %s -m addrtype --dst-type LOCAL -j %s'
                               % (saved_comment(c), cn['nodeports'])))
        else:
            n_services.append(('-m comment --comment %s -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j %s'
                               % (kp_comment(c), cn['nodeports']),
                               '! -d 127.0.0.0/8 -m comment --comment %s -m addrtype --dst-type LOCAL -j %s'
                               % (saved_comment(c), cn['nodeports'])))
    else:
        for ip in st.selected_nodeport_ips():
            if ip.is_loopback and not st.localhost_nodeports:
                continue
            n_services.append(('-m comment --comment %s -d %s -j %s' % (kp_comment(c), ip, cn['nodeports']),
                               '-d %s/32 -m comment --comment %s -j %s' % (ip, saved_comment(c), cn['nodeports'])))

    if not st.conntrack_tcp_be_liberal:
        if st.nfacct:
            f_forward.append(('-m conntrack --ctstate INVALID -m nfacct --nfacct-name %s -j DROP' % NFACCT_CT_INVALID,
                              '-m conntrack --ctstate INVALID -m nfacct --nfacct-name  %s -j DROP'
                              % NFACCT_CT_INVALID))
        else:
            f_forward.append(('-m conntrack --ctstate INVALID -j DROP', '-m conntrack --ctstate INVALID -j DROP'))
    f_forward.append(('-m comment --comment "kubernetes forwarding rules" -m mark --mark %s/%s -j ACCEPT'
                      % (mark, mark),
                      '-m comment --comment "kubernetes forwarding rules" -m mark --mark %s/%s -j ACCEPT'
                      % (mark_s, mark_s)))
    f_forward.append(('-m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
                      'RELATED,ESTABLISHED -j ACCEPT',
                      '-m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
                      'RELATED,ESTABLISHED -j ACCEPT'))
    rs.jumps = _jump_specs(p, st.localhost_nodeports)
    return rs


class Contribution(object):
    """What one Service (namespace/name) put into the ruleset, kept for the partial sync:
    contrib: its rules in the shared chains (each run of them headed by 'table.chain' indices);
    chains: its own nat chains (SVC, SVL, EXT, FW, SEP); endpoints, ports: how many it had;
    filter_rules, nat_rules: how many rules it wrote in each table."""

    __slots__ = ('contrib', 'chains', 'endpoints', 'ports', 'filter_rules', 'nat_rules')

    def __init__(self):
        self.contrib = []
        self.chains = []
        self.endpoints = self.ports = self.filter_rules = self.nat_rules = 0


def _track(track, sp, aggregates, lengths, nat_chains, all_eps, reachable, own):
    key = '%s/%s' % (sp.namespace, sp.name)
    t = track.get(key)
    if t is None:
        t = track[key] = Contribution()
    contrib = t.contrib
    for ti, cs in enumerate(aggregates):
        for ci, c in enumerate(cs):
            n0 = lengths[ti][ci]
            if len(c) > n0:
                contrib.append('%d.%d' % (ti, ci))
                contrib.extend(r for _k, r in c[n0:])
                if ti == 0:
                    t.filter_rules += len(c) - n0
                else:
                    t.nat_rules += len(c) - n0
    chains = t.chains
    for c in own:
        if c in nat_chains and c not in chains:
            chains.append(c)
            t.nat_rules += len(nat_chains[c])
    for e in reachable:
        c = '%s-SEP-%s' % (own[0].split('-SVC-')[0], e.chain_hash)
        if c not in chains:
            chains.append(c)
            t.nat_rules += len(nat_chains[c])
    t.endpoints += len(all_eps)
    t.ports += 1


def _service_to_endpoints(rs, sp, chain_name, endpoints, large):
    chain = rs.chain('nat', chain_name)
    name = sp.name_string
    p = rs.prefix
    if sp.affinity_timeout:
        for e in endpoints:
            sep = '%s-SEP-%s' % (p, e.chain_hash)
            c = '%s -> %s' % (name, e.string)
            kc = '' if large else '-m comment --comment %s ' % kp_comment(c)
            sc = '' if large else '-m comment --comment %s ' % saved_comment(c)
            chain.append(('%s-m recent --name %s --rcheck --seconds %d --reap -j %s'
                          % (kc, sep, sp.affinity_timeout, sep),
                          '%s-m recent --rcheck --seconds %d --reap --name %s --mask 255.255.255.255 --rsource -j %s'
                          % (sc, sp.affinity_timeout, sep, sep)))
    n = len(endpoints)
    for i, e in enumerate(endpoints):
        sep = '%s-SEP-%s' % (p, e.chain_hash)
        c = '%s -> %s' % (name, e.string)
        kc = '' if large else '-m comment --comment %s ' % kp_comment(c)
        sc = '' if large else '-m comment --comment %s ' % saved_comment(c)
        if i < n - 1:
            prob = compute_probability(n - i)
            chain.append(('%s-m statistic --mode random --probability %s -j %s' % (kc, prob, sep),
                          '%s-m statistic --mode random --probability %s -j %s' % (sc, saved_probability(prob), sep)))
        else:
            chain.append(('%s-j %s' % (kc, sep), '%s-j %s' % (sc, sep)))
