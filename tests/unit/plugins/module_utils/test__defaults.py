"""_defaults: each shared default in one place. The YAML that cannot import it (the modules'
DOCUMENTATION, the roles' defaults and argument specs) is held to it here, so drift fails."""

import importlib
import os
import re

import pytest
import yaml

from ansible_collections.barepod.linux.plugins.module_utils import _defaults, _images, _imagestore, _specs

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..'))
SPEC_MODULES = ['cgroup_info', 'cgroup_limit', 'chroot_rootfs', 'node_routes', 'ns_sandbox', 'pod_converged',
                'pod_status', 'veth_net']
_TEMPLATED = re.compile(r"""default\(\s*'([^']*)'\s*\)\s*}}\s*$""")


def _load(*parts):
    with open(os.path.join(REPO, *parts)) as f:
        return yaml.safe_load(f)


def _value(v):
    """A role default: the literal, or the fallback of a templated "{{ x | default('...') }}"."""
    if isinstance(v, str) and '{{' in v:
        m = _TEMPLATED.search(v)
        assert m, 'no default(...) fallback in %r' % v
        return m.group(1)
    return v


def _doc_vs_spec(doc_opts, spec_opts, where):
    for name, spec in spec_opts.items():
        doc = doc_opts.get(name)
        assert doc is not None, '%s.%s is not documented' % (where, name)
        assert doc.get('default') == spec.get('default'), '%s.%s' % (where, name)
        if spec.get('options'):
            _doc_vs_spec(doc.get('suboptions') or {}, spec['options'], '%s.%s' % (where, name))


def _fragment(fragment):
    """A doc fragment of this collection as ansible-doc reads it: barepod.linux.<file>[.<variable>]."""
    parts = fragment.split('.')
    assert parts[:2] == ['barepod', 'linux'] and len(parts) in (3, 4), fragment
    frag = importlib.import_module('ansible_collections.barepod.linux.plugins.doc_fragments.' + parts[2])
    return yaml.safe_load(getattr(frag.ModuleDocFragment, parts[3].upper() if len(parts) == 4 else 'DOCUMENTATION'))


def _doc_options(mod):
    """A module's documented options, with those of its doc fragments merged in as ansible-doc does."""
    doc = yaml.safe_load(mod.DOCUMENTATION)
    options = dict(doc.get('options') or {})
    for fragment in doc.get('extends_documentation_fragment') or []:
        for name, opt in _fragment(fragment)['options'].items():
            assert name not in options, '%s documents %s, also in fragment %s' % (mod.__name__, name, fragment)
            options[name] = opt
    return options


def _module(name):
    return importlib.import_module('ansible_collections.barepod.linux.plugins.modules.' + name)


@pytest.mark.parametrize('name', SPEC_MODULES)
def test_module_docs_show_the_spec_defaults(name):
    _doc_vs_spec(_doc_options(_module(name)), getattr(_specs, name)()['argument_spec'], name)


@pytest.mark.parametrize('name, spec', [('image', _images.spec), ('image_info', _images.info_spec)])
def test_image_module_docs_show_the_spec_defaults(name, spec):
    _doc_vs_spec(_doc_options(_module(name)), spec()['argument_spec'], name)


@pytest.mark.parametrize('fragment, option, default', [('barepod.linux.roots.state_root', 'state_root', _defaults.STATE_ROOT),
                                                       ('barepod.linux.roots.image_store', 'store_root', _imagestore.DEFAULT_ROOT)])
def test_doc_fragments_show_the_shared_defaults(fragment, option, default):
    assert _fragment(fragment)['options'][option]['default'] == default


def test_pod_role_defaults_are_the_shared_ones():
    defaults = _load('roles', 'pod', 'defaults', 'main.yml')
    options = _load('roles', 'pod', 'meta', 'argument_specs.yml')['argument_specs']['main']['options']
    for key, want in _defaults.ROLE_DEFAULTS.items():
        var = 'pod_' + key
        assert _value(defaults[var]) == want, 'roles/pod/defaults/main.yml %s' % var
        assert _value(options[var]['default']) == want, 'roles/pod/meta/argument_specs.yml %s' % var


# (role, variable, the shared default it must have) for the roles other than pod
OTHER_ROLE_VARS = [
    ('service', 'service_state_root', _defaults.STATE_ROOT),
    ('cgroup_audit', 'cgroup_audit_path', _defaults.CGROUP_PARENT),
    ('cgroup_audit', 'cgroup_audit_cgroup_root', _defaults.CGROUP_ROOT),
    ('cgroup_audit', 'cgroup_audit_mountinfo', _defaults.MOUNTINFO),
]


@pytest.mark.parametrize('role, var, want', OTHER_ROLE_VARS)
def test_other_roles_defaults_are_the_shared_ones(role, var, want):
    defaults = _load('roles', role, 'defaults', 'main.yml')
    options = _load('roles', role, 'meta', 'argument_specs.yml')['argument_specs']['main']['options']
    assert _value(defaults[var]) == want
    assert _value(options[var]['default']) == want


def test_pod_status_playbook_reads_the_shared_state_root():
    play = _load('playbooks', 'pod_status.yml')[0]
    assert _value(play['vars']['barepod_state_root']) == _defaults.STATE_ROOT


def test_pod_filter_takes_the_shared_role_defaults():
    from ansible_collections.barepod.linux.plugins.filter import pod
    for key, want in _defaults.ROLE_DEFAULTS.items():
        assert pod.ROLE_DEFAULTS[key] == want, key


def test_specs_use_the_shared_defaults():
    assert _specs.veth_net()['argument_spec']['mtu']['default'] == _defaults.MTU
    for name in ('chroot_rootfs', 'cgroup_limit', 'veth_net', 'pod_status', 'ns_sandbox'):
        assert getattr(_specs, name)()['argument_spec']['state_root']['default'] == _defaults.STATE_ROOT, name


_POD_VAR_FALLBACK = re.compile(r"""\bpod_(\w+)\s*\|\s*default\(\s*'([^']*)'\s*\)""")


def test_playbook_and_role_fallbacks_of_pod_settings_are_the_shared_ones():
    """`pod_<key> | default('...')` anywhere in playbooks/ and roles/ falls back to the shared default."""
    seen = 0
    for top in ('playbooks', 'roles'):
        for d, _dirs, files in os.walk(os.path.join(REPO, top)):
            for fn in files:
                if not fn.endswith(('.yml', '.yaml', '.j2')):
                    continue
                with open(os.path.join(d, fn)) as f:
                    text = f.read()
                for key, fallback in _POD_VAR_FALLBACK.findall(text):
                    if key in _defaults.ROLE_DEFAULTS:
                        seen += 1
                        assert fallback == str(_defaults.ROLE_DEFAULTS[key]), '%s: pod_%s' % (os.path.join(d, fn), key)
    assert seen
