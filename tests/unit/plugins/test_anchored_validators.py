"""Every validating regular expression in the collection rejects a trailing newline.

Python's `$` also matches just before a final "\n", so `^[a-z0-9]+$` accepts "web\n": a name or
address that ends up in a path, a command line or an iptables-restore batch (where a newline starts
a new rule). The validators anchor with `\\Z`; this test checks every anchored pattern in plugins/
and a few real entry points.
"""
import importlib
import pkgutil
import re

import pytest

from ansible_collections.barepod.linux.plugins import module_utils
from ansible_collections.barepod.linux.plugins.filter import pod as pod_filter
from ansible_collections.barepod.linux.plugins.module_utils import _common, _imageref, _kpmodel


def _anchored_patterns():
    mods = [importlib.import_module('%s.%s' % (module_utils.__name__, m.name))
            for m in pkgutil.iter_modules(module_utils.__path__)]
    mods.append(pod_filter)
    out = []
    for mod in mods:
        for name, val in vars(mod).items():
            if isinstance(val, re.Pattern) and val.pattern.startswith('^'):
                out.append(('%s.%s' % (mod.__name__.rsplit('.', 1)[-1], name), val))
    return out


PATTERNS = _anchored_patterns()


def test_patterns_found():
    assert len(PATTERNS) > 15


@pytest.mark.parametrize('name,pattern', PATTERNS, ids=[n for n, _ in PATTERNS])
def test_anchored_pattern_does_not_end_with_dollar(name, pattern):
    assert not pattern.pattern.endswith('$'), '%s ends with $, which matches before a trailing newline' % name


def test_entry_points_refuse_a_trailing_newline():
    with pytest.raises(_common.BarepodError):
        _common.validate_dns_label('metadata.name', 'web\n')
    with pytest.raises(_common.BarepodError):
        _common.validate_dns_subdomain('metadata.namespace', 'default\n')
    # an address is read with surrounding white space stripped and returned canonical
    assert str(_kpmodel._ipv4('spec.clusterIP', '10.96.0.10\n', [])) == '10.96.0.10'
    with pytest.raises(_common.BarepodError):
        _imageref.parse('busybox\n')
