"""Module results never use a key Ansible reserves in a task result (issue 17, item 1).

kube_svc_rules returned `skipped` (the objects not proxied): with any headless, ExternalName or
IPv6 Service, Ansible showed the task as `skipping:`, counted it as skipped, reported changed=false
and did not notify handlers. The first test checks every module's documented results; the second
runs the real case through ansible-playbook inside a throwaway network namespace.
"""
import os
import sys

import yaml

from conftest import REPO, ansible_playbook, requires_root

RESERVED = {'skipped', 'failed', 'unreachable', 'invocation', 'exception', 'results', 'deprecations',
            'warnings', 'msg', 'ansible_facts', 'skip_reason', 'failed_when_result', 'rc'}
MODULES = os.path.join(REPO, 'plugins', 'modules')


def _return_keys(path):
    ns = {}
    src = open(path).read()
    start = src.index("RETURN = r'''") + len("RETURN = r'''")
    ns = yaml.safe_load(src[start:src.index("'''", start)]) or {}
    return set(ns)


def test_no_module_documents_a_reserved_result_key():
    bad = {}
    for name in sorted(os.listdir(MODULES)):
        if name.endswith('.py') and not name.startswith('_'):
            keys = _return_keys(os.path.join(MODULES, name))
            hit = sorted(k for k in keys if k in RESERVED or k.startswith(('ansible_', '_ansible')))
            if hit:
                bad[name] = hit
    assert bad == {}


@requires_root
def test_headless_service_task_is_changed_and_notifies(netns, tmp_path):
    ns = netns('bprk')
    objects = [
        {'apiVersion': 'v1', 'kind': 'Service', 'metadata': {'name': 'web', 'namespace': 'default'},
         'spec': {'clusterIP': '10.96.0.20', 'ports': [{'name': 'http', 'port': 80, 'protocol': 'TCP'}]}},
        {'apiVersion': 'v1', 'kind': 'Service', 'metadata': {'name': 'db', 'namespace': 'default'},
         'spec': {'clusterIP': 'None', 'ports': [{'port': 5432}]}},
    ]
    play = [{'hosts': 'localhost', 'connection': 'local', 'gather_facts': False,
             'vars': {'ansible_python_interpreter': sys.executable},
             'tasks': [{'name': 'Service rules', 'register': 'r', 'notify': 'rules changed',
                        'barepod.linux.kube_svc_rules': {'objects': objects,
                                                         'state_dir': str(tmp_path / 'state')}}],
             'handlers': [{'name': 'rules changed', 'ansible.builtin.set_fact': {'handler_ran': True}}]}]
    pb = tmp_path / 'play.yml'
    pb.write_text(yaml.safe_dump(play))
    rc, res = ansible_playbook(['nsenter', '--net=/run/netns/%s' % ns, os.path.join(os.path.dirname(sys.executable),
                                'ansible-playbook'), '-i', 'localhost,', str(pb)])
    assert rc == 0, res
    stats = res['stats']['localhost']
    assert stats['changed'] == 1 and stats['skipped'] == 0, stats
    tasks = res['plays'][0]['tasks']
    svc = tasks[0]['hosts']['localhost']
    assert svc['changed'] is True and not svc.get('skipped')
    assert [o['reason'] if isinstance(o, dict) else o for o in svc['not_proxied']], svc
    assert 'db' in str(svc['not_proxied'])
    handler = [t for t in tasks if t['task']['name'] == 'rules changed']
    assert handler and handler[0]['hosts']['localhost']['ansible_facts'] == {'handler_ran': True}
