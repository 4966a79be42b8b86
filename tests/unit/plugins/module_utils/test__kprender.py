# -*- coding: utf-8 -*-
"""kube-proxy's rules, each written once (_kprender.Rule): both spellings of every rule kind.

The kp spelling is what kube-proxy writes into iptables-restore (the golden dumps of
proxier_test.go, test__kubeproxy.py); the saved spelling is how iptables-save prints the rule
back (checked against the real iptables in tests/integration/test_kube_svc_rules.py). Here each
rule kind is pinned to both texts, so a wrong second spelling fails without root.
"""
from __future__ import absolute_import, division, print_function

import pytest

from ansible_collections.barepod.linux.plugins.module_utils import _kprender as kpr

SPELLINGS = [
    ('R_AFFINITY_CHECK', ('ns/svc:p80 cluster IP', 'KUBE-SEP-Y', 10800),
     '-m comment --comment "ns/svc:p80 cluster IP" -m recent --name KUBE-SEP-Y --rcheck --seconds 10800 --reap -j KUBE-SEP-Y',
     '-m comment --comment "ns/svc:p80 cluster IP"'
     ' -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-Y --mask 255.255.255.255 --rsource -j KUBE-SEP-Y'),
    ('R_AFFINITY_CHECK_BARE', ('ns/svc:p80 cluster IP', 'KUBE-SEP-Y', 10800),
     '-m recent --name KUBE-SEP-Y --rcheck --seconds 10800 --reap -j KUBE-SEP-Y',
     '-m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-Y --mask 255.255.255.255 --rsource -j KUBE-SEP-Y'),
    ('R_COMMENT', ('ns/svc:p80 cluster IP',),
     '-m comment --comment "ns/svc:p80 cluster IP"',
     '-m comment --comment "ns/svc:p80 cluster IP"'),
    ('R_FORWARD_ESTABLISHED', ('ns/svc:p80 cluster IP',),
     '-m comment --comment "ns/svc:p80 cluster IP" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
     '-m comment --comment "ns/svc:p80 cluster IP" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT'),
    ('R_FORWARD_MARKED', ('ns/svc:p80 cluster IP', '0x00004000'),
     '-m comment --comment "ns/svc:p80 cluster IP" -m mark --mark 0x00004000/0x00004000 -j ACCEPT',
     '-m comment --comment "ns/svc:p80 cluster IP" -m mark --mark 0x4000/0x4000 -j ACCEPT'),
    ('R_FROM', ('ns/svc:p80 cluster IP', '10.0.0.0/8', 'KUBE-SVC-X'),
     '-m comment --comment "ns/svc:p80 cluster IP" -s 10.0.0.0/8 -j KUBE-SVC-X',
     '-s 10.0.0.0/8 -m comment --comment "ns/svc:p80 cluster IP" -j KUBE-SVC-X'),
    ('R_FROM_IP', ('ns/svc:p80 cluster IP', '10.180.0.1', 'KUBE-SVC-X'),
     '-m comment --comment "ns/svc:p80 cluster IP" -s 10.180.0.1 -j KUBE-SVC-X',
     '-s 10.180.0.1/32 -m comment --comment "ns/svc:p80 cluster IP" -j KUBE-SVC-X'),
    ('R_FROM_LOCAL', ('ns/svc:p80 cluster IP', 'KUBE-SVC-X'),
     '-m comment --comment "ns/svc:p80 cluster IP" -m addrtype --src-type LOCAL -j KUBE-SVC-X',
     '-m comment --comment "ns/svc:p80 cluster IP" -m addrtype --src-type LOCAL -j KUBE-SVC-X'),
    ('R_INVALID', (),
     '-m conntrack --ctstate INVALID -j DROP',
     '-m conntrack --ctstate INVALID -j DROP'),
    ('R_INVALID_NFACCT', ('localhost_nps_accepted_pkts',),
     '-m conntrack --ctstate INVALID -m nfacct --nfacct-name localhost_nps_accepted_pkts -j DROP',
     '-m conntrack --ctstate INVALID -m nfacct --nfacct-name  localhost_nps_accepted_pkts -j DROP'),
    ('R_JUMP', ('KUBE-SVC-X',),
     '-j KUBE-SVC-X',
     '-j KUBE-SVC-X'),
    ('R_JUMP_BARE', ('ns/svc:p80 cluster IP', 'KUBE-SVC-X'),
     '-j KUBE-SVC-X',
     '-j KUBE-SVC-X'),
    ('R_JUMP_COMMENTED', ('ns/svc:p80 cluster IP', 'KUBE-SVC-X'),
     '-m comment --comment "ns/svc:p80 cluster IP" -j KUBE-SVC-X',
     '-m comment --comment "ns/svc:p80 cluster IP" -j KUBE-SVC-X'),
    ('R_LOCALHOST_PORT_NFACCT', ('ns/svc:p80 cluster IP', 'tcp', 80, 'localhost_nps_accepted_pkts', 'KUBE-SVC-X'),
     '-m comment --comment "ns/svc:p80 cluster IP" -m tcp -p tcp -d 127.0.0.0/8 --dport 80'
     ' -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-SVC-X',
     '-d 127.0.0.0/8 -p tcp -m comment --comment "ns/svc:p80 cluster IP" -m tcp --dport 80'
     ' -m nfacct --nfacct-name  localhost_nps_accepted_pkts -j KUBE-SVC-X'),
    ('R_LOCALNET', ('ns/svc:p80 cluster IP',),
     '-m comment --comment "ns/svc:p80 cluster IP" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP',
     '! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "ns/svc:p80 cluster IP" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP'),
    ('R_LOCAL_PORT', ('ns/svc:p80 cluster IP', 'tcp', 80, 'KUBE-SVC-X'),
     '-m comment --comment "ns/svc:p80 cluster IP" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 80 -j KUBE-SVC-X',
     '-p tcp -m comment --comment "ns/svc:p80 cluster IP" -m addrtype --dst-type LOCAL -m tcp --dport 80 -j KUBE-SVC-X'),
    ('R_MARK_OR', ('0x00004000',),
     '-j MARK --or-mark 0x00004000',
     '-j MARK --set-xmark 0x4000/0x4000'),
    ('R_MARK_RETURN', ('0x00004000',),
     '-m mark ! --mark 0x00004000/0x00004000 -j RETURN',
     '-m mark ! --mark 0x4000/0x4000 -j RETURN'),
    ('R_MARK_XOR', ('0x00004000',),
     '-j MARK --xor-mark 0x00004000',
     '-j MARK --set-xmark 0x4000/0x0'),
    ('R_NEW_JUMP', ('ns/svc:p80 cluster IP', 'KUBE-SVC-X'),
     '-m conntrack --ctstate NEW -m comment --comment "ns/svc:p80 cluster IP" -j KUBE-SVC-X',
     '-m conntrack --ctstate NEW -m comment --comment "ns/svc:p80 cluster IP" -j KUBE-SVC-X'),
    ('R_PORT', ('ns/svc:p80 cluster IP', 'tcp', 80, 'KUBE-SVC-X'),
     '-m comment --comment "ns/svc:p80 cluster IP" -m tcp -p tcp --dport 80 -j KUBE-SVC-X',
     '-p tcp -m comment --comment "ns/svc:p80 cluster IP" -m tcp --dport 80 -j KUBE-SVC-X'),
    ('R_PORTAL', ('ns/svc:p80 cluster IP', 'tcp', '172.30.0.41', 80, 'KUBE-SVC-X'),
     '-m comment --comment "ns/svc:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-X',
     '-d 172.30.0.41/32 -p tcp -m comment --comment "ns/svc:p80 cluster IP" -m tcp --dport 80 -j KUBE-SVC-X'),
    ('R_PORTAL_NOT_FROM', ('ns/svc:p80 cluster IP', 'tcp', '172.30.0.41', 80, '10.0.0.0/8', 'KUBE-SVC-X'),
     '-m comment --comment "ns/svc:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-SVC-X',
     '! -s 10.0.0.0/8 -d 172.30.0.41/32 -p tcp -m comment --comment "ns/svc:p80 cluster IP" -m tcp --dport 80 -j KUBE-SVC-X'),
    ('R_RANDOM', ('ns/svc:p80 cluster IP', '0.3333333333', 'KUBE-SVC-X'),
     '-m comment --comment "ns/svc:p80 cluster IP" -m statistic --mode random --probability 0.3333333333 -j KUBE-SVC-X',
     '-m comment --comment "ns/svc:p80 cluster IP" -m statistic --mode random --probability 0.33333333349 -j KUBE-SVC-X'),
    ('R_RANDOM_BARE', ('ns/svc:p80 cluster IP', '0.3333333333', 'KUBE-SVC-X'),
     '-m statistic --mode random --probability 0.3333333333 -j KUBE-SVC-X',
     '-m statistic --mode random --probability 0.33333333349 -j KUBE-SVC-X'),
    ('R_SEP_DNAT', ('ns/svc:p80 cluster IP', 'KUBE-SEP-Y', 'tcp', '10.180.0.1:80'),
     '-m comment --comment "ns/svc:p80 cluster IP" -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80',
     '-p tcp -m comment --comment "ns/svc:p80 cluster IP" -m tcp -j DNAT --to-destination 10.180.0.1:80'),
    ('R_SEP_DNAT_AFFINITY', ('ns/svc:p80 cluster IP', 'KUBE-SEP-Y', 'tcp', '10.180.0.1:80'),
     '-m comment --comment "ns/svc:p80 cluster IP" -m recent --name KUBE-SEP-Y --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80',
     '-p tcp -m comment --comment "ns/svc:p80 cluster IP"'
     ' -m recent --set --name KUBE-SEP-Y --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.180.0.1:80'),
    ('R_SEP_DNAT_AFFINITY_BARE', ('ns/svc:p80 cluster IP', 'KUBE-SEP-Y', 'tcp', '10.180.0.1:80'),
     '-m recent --name KUBE-SEP-Y --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80',
     '-p tcp -m recent --set --name KUBE-SEP-Y --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.180.0.1:80'),
    ('R_SEP_DNAT_BARE', ('ns/svc:p80 cluster IP', 'KUBE-SEP-Y', 'tcp', '10.180.0.1:80'),
     '-m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80',
     '-p tcp -m tcp -j DNAT --to-destination 10.180.0.1:80'),
    ('R_SEP_MASQ', ('ns/svc:p80 cluster IP', '10.180.0.1', 'KUBE-SVC-X'),
     '-m comment --comment "ns/svc:p80 cluster IP" -s 10.180.0.1 -j KUBE-SVC-X',
     '-s 10.180.0.1/32 -m comment --comment "ns/svc:p80 cluster IP" -j KUBE-SVC-X'),
    ('R_SEP_MASQ_BARE', ('ns/svc:p80 cluster IP', '10.180.0.1', 'KUBE-SVC-X'),
     '-s 10.180.0.1 -j KUBE-SVC-X',
     '-s 10.180.0.1/32 -j KUBE-SVC-X'),
    ('R_SNAT', ('ns/svc:p80 cluster IP',),
     '-m comment --comment "ns/svc:p80 cluster IP" -j MASQUERADE',
     '-m comment --comment "ns/svc:p80 cluster IP" -j MASQUERADE'),
    ('R_SNAT_RANDOM_FULLY', ('ns/svc:p80 cluster IP',),
     '-m comment --comment "ns/svc:p80 cluster IP" -j MASQUERADE --random-fully',
     '-m comment --comment "ns/svc:p80 cluster IP" -j MASQUERADE --random-fully'),
    ('R_TO_IP', ('ns/svc:p80 cluster IP', '172.30.0.41', 'KUBE-SVC-X'),
     '-m comment --comment "ns/svc:p80 cluster IP" -d 172.30.0.41 -j KUBE-SVC-X',
     '-d 172.30.0.41/32 -m comment --comment "ns/svc:p80 cluster IP" -j KUBE-SVC-X'),
    ('R_TO_LOCAL', ('ns/svc:p80 cluster IP', 'KUBE-SVC-X'),
     '-m comment --comment "ns/svc:p80 cluster IP" -m addrtype --dst-type LOCAL -j KUBE-SVC-X',
     '-m comment --comment "ns/svc:p80 cluster IP" -m addrtype --dst-type LOCAL -j KUBE-SVC-X'),
    ('R_TO_LOCAL_NOT_LOOPBACK', ('ns/svc:p80 cluster IP', 'KUBE-SVC-X'),
     '-m comment --comment "ns/svc:p80 cluster IP" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-SVC-X',
     '! -d 127.0.0.0/8 -m comment --comment "ns/svc:p80 cluster IP" -m addrtype --dst-type LOCAL -j KUBE-SVC-X'),
    # a comment without a space is not quoted by kube-proxy, always by iptables-save
    ('R_SEP_MASQ', ('ns/svc:p80', '10.180.0.1', 'KUBE-MARK-MASQ'),
     '-m comment --comment ns/svc:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ',
     '-s 10.180.0.1/32 -m comment --comment "ns/svc:p80" -j KUBE-MARK-MASQ'),
    # REJECT gets its default --reject-with back from iptables-save
    ('R_PORTAL', ('ns/svc:p80 has no endpoints', 'udp', '172.30.0.41', 53, 'REJECT'),
     '-m comment --comment "ns/svc:p80 has no endpoints" -m udp -p udp -d 172.30.0.41 --dport 53 -j REJECT',
     '-d 172.30.0.41/32 -p udp -m comment --comment "ns/svc:p80 has no endpoints" -m udp --dport 53 '
     '-j REJECT --reject-with icmp-port-unreachable'),
    ('R_LOCAL_PORT', ('ns/svc:p80 has no local endpoints', 'sctp', 30080, 'DROP'),
     '-m comment --comment "ns/svc:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m sctp -p sctp '
     '--dport 30080 -j DROP',
     '-p sctp -m comment --comment "ns/svc:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m sctp '
     '--dport 30080 -j DROP'),
    # the mark of another masquerade bit, and a probability the kernel rounds
    ('R_MARK_OR', ('0x00000008',), '-j MARK --or-mark 0x00000008', '-j MARK --set-xmark 0x8/0x8'),
    ('R_RANDOM', ('ns/svc:p80 -> 10.180.0.1:80', '0.1428571429', 'KUBE-SEP-Y'),
     '-m comment --comment "ns/svc:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.1428571429 '
     '-j KUBE-SEP-Y',
     '-m comment --comment "ns/svc:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.14285714272 '
     '-j KUBE-SEP-Y'),
]


@pytest.mark.parametrize('name,args,kp,saved', SPELLINGS, ids=['%s-%d' % (s[0], i) for i, s in enumerate(SPELLINGS)])
def test_each_rule_yields_kube_proxys_and_iptables_saves_spelling(name, args, kp, saved):
    rule = getattr(kpr, name)
    assert len(args) == len(rule.params)
    assert rule(*args) == (kp, saved)
    assert rule.make(*args) == (kp, saved)


def test_every_rule_kind_is_pinned():
    kinds = set(n for n in dir(kpr) if n.startswith('R_') and isinstance(getattr(kpr, n), kpr.Rule))
    assert kinds == set(s[0] for s in SPELLINGS)


def test_saved_spelling_of_a_rule_as_iptables_save_orders_it():
    r = kpr.Rule('-m comment --comment {comment} -m {proto} -p {proto} -d {dst_ip} --dport {port} ! -s {cidr} '
                 '-m nfacct --nfacct-name {nfacct} -j {target}')
    assert r.params == ('comment', 'proto', 'dst_ip', 'port', 'cidr', 'nfacct', 'target')
    kp, saved = r('a b', 'tcp', '1.2.3.4', 80, '10.0.0.0/8', 'acct', 'X')
    assert kp == '-m comment --comment "a b" -m tcp -p tcp -d 1.2.3.4 --dport 80 ! -s 10.0.0.0/8 -m nfacct --nfacct-name acct -j X'
    assert saved == ('! -s 10.0.0.0/8 -d 1.2.3.4/32 -p tcp -m comment --comment "a b" -m tcp --dport 80 '
                     '-m nfacct --nfacct-name  acct -j X')


def test_a_template_kube_proxy_could_not_write_is_refused():
    with pytest.raises(ValueError):
        kpr.Rule('--dport {port} -j X')
