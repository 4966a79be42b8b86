# -*- coding: utf-8 -*-
"""kube_svc_rules run as Ansible runs it (a fresh interpreter), with apply=false: no root, no
iptables. main() is run_module over the SvcRules manager; what it adds is checked here: the
manager's warnings reach Ansible's, large object lists are not echoed back, the result keys."""
from __future__ import absolute_import, division, print_function

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..'))
from conftest import run_module  # noqa: E402


def service(i, ip):
    return dict(apiVersion='v1', kind='Service', metadata=dict(namespace='ns', name='s%d' % i),
                spec=dict(clusterIP=ip, ports=[dict(name='p80', port=80)]))


def test_leading_zero_addresses_warn_through_ansible():
    r = run_module('kube_svc_rules', dict(objects=[service(0, '172.30.0.041')], apply=False))
    assert not r.failed, r
    assert r['services'] == 1 and '-d 172.30.0.41 ' in r['payload']
    warned = json.dumps(r.get('warnings'))     # (strings, or WarningSummary records on newer Ansible)
    assert 'objects[0].spec.clusterIP' in warned and 'leading zeros' in warned, warned
    assert r['changed'] is False and r['actions'] == []
    assert r['invocation']['module_args']['objects'][0]['spec']['clusterIP'] == '172.30.0.041'


def test_more_than_a_hundred_objects_are_counted_not_echoed():
    objs = [service(i, '172.30.%d.%d' % (i // 250, i % 250 + 1)) for i in range(101)]
    r = run_module('kube_svc_rules', dict(objects=objs, apply=False, return_payload=False))
    assert not r.failed, r
    assert r['services'] == 101 and 'warnings' not in r
    assert r['invocation']['module_args']['objects'] == '(101 objects, not echoed)'
    assert r['invocation']['module_args']['chain_prefix'] == 'KUBE'


def test_bad_input_fails_naming_the_field():
    r = run_module('kube_svc_rules', dict(objects=[service(0, '172.30.0.256')], apply=False))
    assert r.failed and 'objects[0].spec.clusterIP' in r['msg'], r
