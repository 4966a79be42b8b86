# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kube-proxy's iptables mode, as a pure function of Services and EndpointSlices.

render(objects, settings) returns a Ruleset: per table ("filter", "nat") an ordered mapping
chain -> rules, plus the jump rules from the built-in chains. Every rule is held in two
spellings, both made by one Rule (each of syncProxyRules' rules is written once, in
kube-proxy's spelling, and the other is derived from it):

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

import re
from operator import itemgetter

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


# --------------------------------------------------------------------------- rules

_RECENT_TAIL = ['--mask', '255.255.255.255', '--rsource']
_HEADER = ('-s', '-d', '-p')


class Rule(object):
    """One rule of kube-proxy's, written once, in kube-proxy's own spelling, from which both
    spellings come: ``kp`` (what syncProxyRules writes into iptables-restore) and ``saved``
    (how iptables-save prints the rule back; the sync compares with it, and a wrong one would
    rewrite the rule on every run).

    The template is kube-proxy's argument list with {placeholders}: {comment} (kube-proxy quotes
    it only when it holds a space, iptables-save always), a name ending in _ip a host address
    (iptables-save adds /32, as it does to literal addresses), {prob} a probability
    (iptables-save prints the kernel's 31-bit fixed point with %.11f), {mark} the masquerade
    mark (printed without leading zeros) and {target} a jump target (REJECT gets its default
    --reject-with). iptables-save moves -s, -d and -p (with their "!") to the front in that
    order, writes the recent match's options and the MARK target in its own order and words,
    and prints --nfacct-name with two spaces.

    Rule(template)(*values in the order of the placeholders' first appearance) -> (kp, saved).
    """

    __slots__ = ('template', 'params', 'comment_at', 'derived', 'kp', 'kp_quoted', 'kp_args', 'saved', 'saved_args',
                 'make')

    def __init__(self, template, params=None):
        self.template = template
        # the arguments: the placeholders in the order they first appear (or as given)
        self.params = tuple(params or dict.fromkeys(_PLACEHOLDER_RE.findall(template)))
        self.comment_at = None
        toks = template.split(' ')
        header = {}
        mods = []       # the matches, each [-m, name, options...], in kube-proxy's order
        target = ''
        i = 0
        while i < len(toks):
            t = toks[i]
            neg = t == '!' and i + 1 < len(toks) and toks[i + 1] in _HEADER
            if neg:
                i += 1
                t = toks[i]
            if t in _HEADER:
                v = toks[i + 1]
                if t != '-p' and '/' not in v and (v.endswith('_ip}') or not v.startswith('{')):
                    v += '/32'
                header[t] = ('! ' if neg else '') + t + ' ' + v
                i += 2
            elif t == '-j':
                target = self._saved_target(toks[i + 1:])
                break
            elif t == '-m':
                mods.append([t])
                i += 1
            elif mods:
                mods[-1].append(t)
                i += 1
            else:
                raise ValueError('rule template %r: %r outside a match' % (template, t))
        body = [' '.join(self._saved_match(m)) for m in mods] + ([target] if target else [])
        saved = ' '.join([header[h] for h in _HEADER if h in header] + body)
        # Compiled to two %-formats over the arguments, extended by the derived spellings, each
        # picked by an itemgetter: as fast as the hand-written pair (there are many rules).
        names = list(self.params)
        if '{comment}' in template:
            self.comment_at = names.index('comment')
        # kube-proxy quotes a comment only when it holds a space: two formats, one picked per call
        kp, kp_names = _positional(template)
        self.kp_quoted = _positional(template.replace('{comment}', '"{comment}"'))[0]
        saved, saved_names = _positional(saved.replace('{comment}', '"{comment}"').replace(
            '{mark}', '{smark}').replace('{prob}', '{sprob}'))
        derived = []
        for name, src, fn in (('smark', 'mark', _saved_mark), ('sprob', 'prob', saved_probability),
                              ('starget', 'target', _saved_jump_target)):
            if name in saved_names:
                derived.append((names.index(src), fn))
                names.append(name)
        self.derived = tuple(derived)
        self.kp, self.kp_args = kp, _getter([names.index(n) for n in kp_names])
        self.saved, self.saved_args = saved, _getter([names.index(n) for n in saved_names])
        self.make = _maker(self.kp, self.kp_quoted, self.kp_args, self.saved, self.saved_args, self.comment_at,
                           self.derived)

    @staticmethod
    def _saved_match(m):
        if m[1] == 'recent':
            opts = m[2:]
            name = opts[opts.index('--name') + 1]
            rest = [o for k, o in enumerate(opts) if o != '--name' and (k == 0 or opts[k - 1] != '--name')]
            return ['-m', 'recent'] + rest + ['--name', name] + _RECENT_TAIL
        if m[1] == 'nfacct':
            return [('--nfacct-name ' if o == '--nfacct-name' else o) for o in m]
        return m

    @staticmethod
    def _saved_target(t):
        if t[0] == 'MARK' and t[1] == '--xor-mark':
            return '-j MARK --set-xmark %s/0x0' % t[2]
        if t[0] == 'MARK' and t[1] == '--or-mark':
            return '-j MARK --set-xmark %s/%s' % (t[2], t[2])
        if t == ['REJECT']:
            return '-j REJECT --reject-with icmp-port-unreachable'
        if t == ['{target}']:
            return '-j {starget}'
        return ' '.join(['-j'] + t)

    def __call__(self, *args):
        """args: one value for each of self.params, in that order -> (kp, saved)."""
        return self.make(*args)


def _maker(kp, kp_quoted, kp_args, saved, saved_args, at, derived):
    """Rule.make: a plain function (a call through a class's __call__ costs a fifth more, and
    the rules are many), specialised for what the rule needs derived."""
    if at is None and not derived:
        def make(*args):
            return kp % kp_args(args), saved % saved_args(args)
    elif not derived:
        def make(*args):
            return (kp_quoted if ' ' in args[at] else kp) % kp_args(args), saved % saved_args(args)
    else:
        def make(*args):
            k = kp_quoted if at is not None and ' ' in args[at] else kp
            for src, fn in derived:
                args += (fn(args[src]),)
            return k % kp_args(args), saved % saved_args(args)
    return make


_PLACEHOLDER_RE = re.compile(r'\{([a-z_]+)\}')


def _positional(template):
    """'-d {dst_ip} --dport {port}' -> ('-d %s --dport %s', ['dst_ip', 'port'])."""
    return _PLACEHOLDER_RE.sub('%s', template.replace('%', '%%')), _PLACEHOLDER_RE.findall(template)


def _getter(indices):
    """A function picking these indices of a tuple, as a tuple."""
    if len(indices) > 1:
        return itemgetter(*indices)
    if indices:
        i = indices[0]
        return lambda args: (args[i],)
    return lambda args: ()


def _saved_mark(mark):
    return '0x%x' % int(mark, 16)


def _saved_jump_target(target):
    return target + ' --reject-with icmp-port-unreachable' if target == 'REJECT' else target


def _uncommented(rule):
    """The same rule without its comment (large cluster mode drops the per-endpoint comments)."""
    return Rule(rule.template.replace('-m comment --comment {comment} ', ''), params=rule.params)


# syncProxyRules' rules, each once. Names ending in _ip are host addresses, {cidr} a network.
R_MARK_RETURN = Rule('-m mark ! --mark {mark}/{mark} -j RETURN')
R_MARK_XOR = Rule('-j MARK --xor-mark {mark}')
R_MARK_OR = Rule('-j MARK --or-mark {mark}')
R_SNAT = Rule('-m comment --comment {comment} -j MASQUERADE')
R_SNAT_RANDOM_FULLY = Rule('-m comment --comment {comment} -j MASQUERADE --random-fully')
R_LOCALNET = Rule('-m comment --comment {comment} -d 127.0.0.0/8 ! -s 127.0.0.0/8 '
                  '-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP')
R_PORTAL = Rule('-m comment --comment {comment} -m {proto} -p {proto} -d {dst_ip} --dport {port} -j {target}')
R_PORTAL_NOT_FROM = Rule('-m comment --comment {comment} -m {proto} -p {proto} -d {dst_ip} --dport {port} '
                         '! -s {cidr} -j {target}')
R_LOCAL_PORT = Rule('-m comment --comment {comment} -m addrtype --dst-type LOCAL -m {proto} -p {proto} '
                    '--dport {port} -j {target}')
R_PORT = Rule('-m comment --comment {comment} -m {proto} -p {proto} --dport {port} -j {target}')
R_LOCALHOST_PORT_NFACCT = Rule('-m comment --comment {comment} -m {proto} -p {proto} -d 127.0.0.0/8 --dport {port} '
                               '-m nfacct --nfacct-name {nfacct} -j {target}')
R_JUMP_COMMENTED = Rule('-m comment --comment {comment} -j {target}')
R_JUMP = Rule('-j {target}')
R_COMMENT = Rule('-m comment --comment {comment}')
R_FROM = Rule('-m comment --comment {comment} -s {cidr} -j {target}')
R_FROM_IP = Rule('-m comment --comment {comment} -s {src_ip} -j {target}')
R_FROM_LOCAL = Rule('-m comment --comment {comment} -m addrtype --src-type LOCAL -j {target}')
R_TO_LOCAL = Rule('-m comment --comment {comment} -m addrtype --dst-type LOCAL -j {target}')
R_TO_LOCAL_NOT_LOOPBACK = Rule('-m comment --comment {comment} -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j {target}')
R_TO_IP = Rule('-m comment --comment {comment} -d {dst_ip} -j {target}')
R_AFFINITY_CHECK = Rule('-m comment --comment {comment} -m recent --name {chain} --rcheck --seconds {seconds} '
                        '--reap -j {chain}')
R_RANDOM = Rule('-m comment --comment {comment} -m statistic --mode random --probability {prob} -j {target}')
R_SEP_MASQ = R_FROM_IP
R_SEP_DNAT = Rule('-m comment --comment {comment} -m {proto} -p {proto} -j DNAT --to-destination {endpoint}',
                  params=('comment', 'chain', 'proto', 'endpoint'))   # (as R_SEP_DNAT_AFFINITY's)
R_SEP_DNAT_AFFINITY = Rule('-m comment --comment {comment} -m recent --name {chain} --set -m {proto} -p {proto} '
                           '-j DNAT --to-destination {endpoint}')
R_INVALID = Rule('-m conntrack --ctstate INVALID -j DROP')
R_INVALID_NFACCT = Rule('-m conntrack --ctstate INVALID -m nfacct --nfacct-name {nfacct} -j DROP')
R_FORWARD_MARKED = Rule('-m comment --comment {comment} -m mark --mark {mark}/{mark} -j ACCEPT')
R_FORWARD_ESTABLISHED = Rule('-m comment --comment {comment} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT')
R_NEW_JUMP = Rule('-m conntrack --ctstate NEW -m comment --comment {comment} -j {target}')
# (large cluster mode: the rules of the per-endpoint chains and the SVC chains without comments)
R_AFFINITY_CHECK_BARE = _uncommented(R_AFFINITY_CHECK)
R_RANDOM_BARE = _uncommented(R_RANDOM)
R_SEP_MASQ_BARE = _uncommented(R_SEP_MASQ)
R_SEP_DNAT_BARE = _uncommented(R_SEP_DNAT)
R_SEP_DNAT_AFFINITY_BARE = _uncommented(R_SEP_DNAT_AFFINITY)
R_JUMP_BARE = _uncommented(R_JUMP_COMMENTED)


def _jump_specs(prefix, localhost_fw):
    c = chain_names(prefix)
    specs = [
        ('filter', c['external_services'], 'INPUT', 'kubernetes externally-visible service portals', R_NEW_JUMP),
        ('filter', c['external_services'], 'FORWARD', 'kubernetes externally-visible service portals', R_NEW_JUMP),
        ('filter', c['nodeports'], 'INPUT', 'kubernetes health check service ports', R_JUMP_COMMENTED),
        ('filter', c['services'], 'FORWARD', 'kubernetes service portals', R_NEW_JUMP),
        ('filter', c['services'], 'OUTPUT', 'kubernetes service portals', R_NEW_JUMP),
        ('filter', c['forward'], 'FORWARD', 'kubernetes forwarding rules', R_JUMP_COMMENTED),
        ('filter', c['proxy_firewall'], 'INPUT', 'kubernetes load balancer firewall', R_NEW_JUMP),
        ('filter', c['proxy_firewall'], 'OUTPUT', 'kubernetes load balancer firewall', R_NEW_JUMP),
        ('filter', c['proxy_firewall'], 'FORWARD', 'kubernetes load balancer firewall', R_NEW_JUMP),
        ('nat', c['services'], 'OUTPUT', 'kubernetes service portals', R_JUMP_COMMENTED),
        ('nat', c['services'], 'PREROUTING', 'kubernetes service portals', R_JUMP_COMMENTED),
        ('nat', c['postrouting'], 'POSTROUTING', 'kubernetes postrouting rules', R_JUMP_COMMENTED),
    ]
    if localhost_fw:
        specs += [('filter', c['firewall'], 'INPUT', '', R_JUMP_BARE), ('filter', c['firewall'], 'OUTPUT', '', R_JUMP_BARE)]
    return [(table, src) + rule.make(comment, dst) for table, dst, src, comment, rule in specs]


def render(objects, settings, track=None, warnings=None):
    """Services + EndpointSlices -> Ruleset, exactly as kube-proxy's syncProxyRules."""
    svc_ports, endpoints, skipped = load(objects, settings.node_name, warnings=warnings)
    rs = _render(svc_ports, endpoints, settings, track=track)
    rs.skipped = skipped
    return rs


class _Shared(object):
    """What every Service's rules go into or use: the fixed chains, in kube-proxy's order of
    creation, and the settings."""

    __slots__ = ('rs', 'st', 'prefix', 'names', 'masq', 'local_cidr', 'large', 'f_services', 'f_ext', 'f_forward',
                 'f_nodeports', 'f_pfw', 'n_services', 'n_nodeports', 'aggregates')

    def __init__(self, rs, st):
        self.rs, self.st, self.prefix = rs, st, st.chain_prefix
        cn = self.names = chain_names(st.chain_prefix)
        self.masq = cn['mark_masq']
        self.local_cidr = str(st.cluster_cidr) if st.cluster_cidr else None
        self.large = False
        self.f_services = rs.chain('filter', cn['services'])
        self.f_ext = rs.chain('filter', cn['external_services'])
        self.f_forward = rs.chain('filter', cn['forward'])
        self.f_nodeports = rs.chain('filter', cn['nodeports'])
        self.f_pfw = rs.chain('filter', cn['proxy_firewall'])
        self.n_services = rs.chain('nat', cn['services'])
        self.n_nodeports = rs.chain('nat', cn['nodeports'])
        # (what a Service adds to these is tracked for the partial sync: the filter ones, then nat)
        self.aggregates = ((self.f_services, self.f_ext, self.f_nodeports, self.f_pfw),
                           (self.n_services, self.n_nodeports))


def _render(svc_ports, endpoints_map, st, large=None, track=None, on_new=None):
    """syncProxyRules: the fixed rules, each Service's, then the tail of the shared chains.
    large: force kube-proxy's large-cluster mode (a partial render of some Services must use
    the mode of the whole set). track: a dict filled with what each Service (namespace/name)
    contributes (a Contribution). on_new(table, chain): called as each chain is created (see
    Ruleset)."""
    rs = Ruleset(st.chain_prefix, on_new)
    sh = _Shared(rs, st)
    _fixed_rules(sh)
    total = 0
    for sp in svc_ports:
        total += len(endpoints_map.get((sp.name_string, sp.protocol), ()))
    if large is None:
        large = total > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
    rs.large_cluster_mode = sh.large = large
    rs.services = len(svc_ports)
    rs.endpoints = total
    nat_chains = rs.chains['nat']
    for sp in svc_ports:
        all_eps = endpoints_map.get((sp.name_string, sp.protocol), [])
        if track is not None:
            lengths = [[len(c) for c in cs] for cs in sh.aggregates]
        reachable, own = _service_rules(sh, sp, all_eps)
        if track is not None:
            _track(track, sp, sh.aggregates, lengths, nat_chains, all_eps, reachable, own)
    _tail_rules(sh)
    rs.jumps = _jump_specs(st.chain_prefix, st.localhost_nodeports)
    return rs


def _fixed_rules(sh):
    st, rs, cn = sh.st, sh.rs, sh.names
    n_post = rs.chain('nat', cn['postrouting'])
    n_masq = rs.chain('nat', cn['mark_masq'])
    n_post.append(R_MARK_RETURN.make(st.mark))
    n_post.append(R_MARK_XOR.make(st.mark))
    snat = R_SNAT_RANDOM_FULLY if st.random_fully else R_SNAT
    n_post.append(snat.make('kubernetes service traffic requiring SNAT'))
    n_masq.append(R_MARK_OR.make(st.mark))
    if st.localhost_nodeports:
        rs.chain('filter', cn['firewall']).append(R_LOCALNET.make('block incoming localnet connections'))


class _Policy(object):
    """Where one service port's traffic goes (the chain names and targets of syncProxyRules)."""

    __slots__ = ('svc', 'svl', 'ext', 'fw', 'has_eps', 'internal_chain', 'has_internal', 'external_chain',
                 'has_external', 'uses_ext_chain', 'lb_chain', 'uses_fw', 'int_target', 'int_comment',
                 'ext_target', 'ext_comment', 'uses_cluster_chain', 'uses_local_chain')

    def __init__(self, prefix, sp, cluster_eps, local_eps, has_eps):
        self.svc = '%s-SVC-%s' % (prefix, sp.hash)
        self.svl = '%s-SVL-%s' % (prefix, sp.hash)
        self.ext = '%s-EXT-%s' % (prefix, sp.hash)
        self.fw = '%s-FW-%s' % (prefix, sp.hash)
        self.has_eps = has_eps
        self.uses_cluster_chain = bool(cluster_eps) and sp.uses_cluster_endpoints()
        self.uses_local_chain = bool(local_eps) and sp.uses_local_endpoints()
        self.internal_chain, self.has_internal = self.svc, has_eps
        if sp.internal_local:
            self.internal_chain = self.svl
            if not local_eps:
                self.has_internal = False
        self.external_chain, self.has_external = self.svc, has_eps
        if sp.external_local:
            self.external_chain = self.svl
            if not local_eps:
                self.has_external = False
        self.uses_ext_chain = has_eps and sp.externally_accessible()
        self.uses_fw = has_eps and bool(sp.lb_vips) and bool(sp.lb_source_ranges)
        self.lb_chain = self.fw if self.uses_fw else self.ext
        self.int_target = self.int_comment = self.ext_target = self.ext_comment = None
        name = sp.name_string
        if not has_eps:
            self.int_target = self.ext_target = 'REJECT'
            self.int_comment = self.ext_comment = '%s has no endpoints' % name
        else:
            if not self.has_internal:
                self.int_target, self.int_comment = 'DROP', '%s has no local endpoints' % name
            if not self.has_external:
                self.ext_target, self.ext_comment = 'DROP', '%s has no local endpoints' % name


def _service_rules(sh, sp, all_eps):
    """One service port's rules, in syncProxyRules' order. -> (reachable endpoints, its own chains)."""
    cluster_eps, local_eps, reachable, has_eps = categorize_endpoints(all_eps, sp)
    pol = _Policy(sh.prefix, sp, cluster_eps, local_eps, has_eps)
    _capture_rules(sh, sp, pol)
    _internal_rules(sh, sp, pol)
    _external_rules(sh, sp, pol)
    _firewall_rules(sh, sp, pol)
    if pol.uses_cluster_chain:
        _service_to_endpoints(sh, sp, pol.svc, cluster_eps)
    if pol.uses_local_chain:
        _service_to_endpoints(sh, sp, pol.svl, local_eps)
    _endpoint_chains(sh, sp, reachable)
    return reachable, (pol.svc, pol.svl, pol.ext, pol.fw)


def _capture_rules(sh, sp, pol):
    """The clusterIP, externalIPs, load-balancer IPs, nodePort and healthCheckNodePort captures."""
    name, proto, port = sp.name_string, sp.proto, sp.port
    ext_target, ext_comment = pol.ext_target, pol.ext_comment
    if pol.has_internal:
        sh.n_services.append(R_PORTAL.make(name + ' cluster IP', proto, sp.cluster_ip, port, pol.internal_chain))
    else:
        sh.f_services.append(R_PORTAL.make(pol.int_comment, proto, sp.cluster_ip, port, pol.int_target))
    for eip in sp.external_ips:
        if pol.has_eps:
            sh.n_services.append(R_PORTAL.make(name + ' external IP', proto, eip, port, pol.ext))
        if not pol.has_external:
            sh.f_ext.append(R_PORTAL.make(ext_comment, proto, eip, port, ext_target))
    for vip in sp.lb_vips:
        if pol.has_eps:
            sh.n_services.append(R_PORTAL.make(name + ' loadbalancer IP', proto, vip, port, pol.lb_chain))
        if pol.uses_fw:
            sh.f_pfw.append(R_PORTAL.make('%s traffic not accepted by %s' % (name, pol.fw), proto, vip, port, 'DROP'))
    if not pol.has_external:
        for vip in sp.lb_vips:
            sh.f_ext.append(R_PORTAL.make(ext_comment, proto, vip, port, ext_target))
    if sp.node_port:
        st = sh.st
        if pol.has_eps:
            if st.localhost_nodeports and st.nfacct:
                sh.n_nodeports.append(R_LOCALHOST_PORT_NFACCT.make(name, proto, sp.node_port, NFACCT_LOCALHOST_NP, pol.ext))
            sh.n_nodeports.append(R_PORT.make(name, proto, sp.node_port, pol.ext))
        if not pol.has_external:
            sh.f_ext.append(R_LOCAL_PORT.make(ext_comment, proto, sp.node_port, ext_target))
    if sp.health_check_node_port:
        sh.f_nodeports.append(R_PORT.make('%s health check node port' % name, 'tcp', sp.health_check_node_port, 'ACCEPT'))


def _internal_rules(sh, sp, pol):
    """Masquerade what reaches the cluster IP from outside the cluster CIDR (or everything)."""
    if not pol.has_internal:
        return
    comment = sp.name_string + ' cluster IP'
    if sh.st.masquerade_all:
        sh.rs.chain('nat', pol.internal_chain).append(R_PORTAL.make(comment, sp.proto, sp.cluster_ip, sp.port, sh.masq))
    elif sh.local_cidr:
        sh.rs.chain('nat', pol.internal_chain).append(R_PORTAL_NOT_FROM.make(
            comment, sp.proto, sp.cluster_ip, sp.port, sh.local_cidr, sh.masq))


def _external_rules(sh, sp, pol):
    """The EXT chain: masquerade, or (externalTrafficPolicy Local) short-circuit pod and node traffic."""
    if not pol.uses_ext_chain:
        return
    name, masq = sp.name_string, sh.masq
    ext = sh.rs.chain('nat', pol.ext)
    if not sp.external_local:
        ext.append(R_JUMP_COMMENTED.make('masquerade traffic for %s external destinations' % name, masq))
    else:
        if sh.local_cidr:
            ext.append(R_FROM.make('pod traffic for %s external destinations' % name, sh.local_cidr, pol.svc))
        ext.append(R_FROM_LOCAL.make('masquerade LOCAL traffic for %s external destinations' % name, masq))
        ext.append(R_FROM_LOCAL.make('route LOCAL traffic for %s external destinations' % name, pol.svc))
    if pol.has_external:
        ext.append(R_JUMP.make(pol.external_chain))


def _firewall_rules(sh, sp, pol):
    """The FW chain: loadBalancerSourceRanges (and the node itself when it is in them)."""
    if not pol.uses_fw:
        return
    fw = sh.rs.chain('nat', pol.fw)
    comment = '%s loadbalancer IP' % sp.name_string
    node_ip = sh.st.node_ip
    allow_from_node = False
    for cidr in sp.lb_source_ranges:
        fw.append(R_FROM.make(comment, cidr, pol.ext))
        if node_ip is not None and node_ip in cidr:
            allow_from_node = True
    if allow_from_node:
        for vip in sp.lb_vips:
            fw.append(R_FROM_IP.make(comment, vip, pol.ext))
    fw.append(R_COMMENT.make('other traffic to %s will be dropped by %s' % (sp.name_string, sh.names['proxy_firewall'])))


def _service_to_endpoints(sh, sp, chain_name, endpoints):
    """An SVC or SVL chain: session affinity first, then the random choice of an endpoint."""
    chain = sh.rs.chain('nat', chain_name)
    name = sp.name_string
    p = sh.prefix
    large = sh.large
    if sp.affinity_timeout:
        check = R_AFFINITY_CHECK_BARE if large else R_AFFINITY_CHECK
        for e in endpoints:
            chain.append(check.make('%s -> %s' % (name, e.string), '%s-SEP-%s' % (p, e.chain_hash), sp.affinity_timeout))
    rnd, last = (R_RANDOM_BARE.make, R_JUMP_BARE.make) if large else (R_RANDOM.make, R_JUMP_COMMENTED.make)
    n = len(endpoints)
    for i, e in enumerate(endpoints):
        sep = '%s-SEP-%s' % (p, e.chain_hash)
        if i < n - 1:
            chain.append(rnd('%s -> %s' % (name, e.string), compute_probability(n - i), sep))
        else:
            chain.append(last('%s -> %s' % (name, e.string), sep))


def _endpoint_chains(sh, sp, reachable):
    """A SEP chain per endpoint: masquerade hairpin traffic, DNAT (recording affinity)."""
    p, masq, proto, name = sh.prefix, sh.masq, sp.proto, sp.name_string
    if sh.large:
        from_ep, dnat = R_SEP_MASQ_BARE, (R_SEP_DNAT_AFFINITY_BARE if sp.affinity_timeout else R_SEP_DNAT_BARE)
    else:
        from_ep, dnat = R_SEP_MASQ, (R_SEP_DNAT_AFFINITY if sp.affinity_timeout else R_SEP_DNAT)
    from_ep, dnat = from_ep.make, dnat.make
    chain_of = sh.rs.chain
    for e in reachable:
        sep = '%s-SEP-%s' % (p, e.chain_hash)
        chain = chain_of('nat', sep)
        chain.append(from_ep(name, e.ip, masq))
        chain.append(dnat(name, sep, proto, e.string))


def _tail_rules(sh):
    """The nodeports tail-call (after every other service portal rule) and KUBE-FORWARD."""
    st = sh.st
    nodeports = sh.names['nodeports']
    c = 'kubernetes service nodeports; NOTE: this must be the last rule in this chain'
    if st.nodeport_match_all():
        tail = R_TO_LOCAL if st.localhost_nodeports else R_TO_LOCAL_NOT_LOOPBACK
        sh.n_services.append(tail.make(c, nodeports))
    else:
        for ip in st.selected_nodeport_ips():
            if ip.is_loopback and not st.localhost_nodeports:
                continue
            sh.n_services.append(R_TO_IP.make(c, ip, nodeports))
    if not st.conntrack_tcp_be_liberal:
        if st.nfacct:
            sh.f_forward.append(R_INVALID_NFACCT.make(NFACCT_CT_INVALID))
        else:
            sh.f_forward.append(R_INVALID.make())
    sh.f_forward.append(R_FORWARD_MARKED.make('kubernetes forwarding rules', st.mark))
    sh.f_forward.append(R_FORWARD_ESTABLISHED.make('kubernetes forwarding conntrack rule'))


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
