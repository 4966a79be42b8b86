# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One way to turn a manager (``_common.Manager``) into an Ansible module.

Every module's main() is ``run_module('<name>', _specs.<name>(), <Manager>)``: AnsibleModule
with the spec and check mode, the optional third-party libraries checked, the manager run,
its warnings passed to ``module.warn``, its diff returned only under --diff, and a
BarepodError (or an OSError) turned into ``fail_json`` naming the field, never a traceback.
"""

from __future__ import annotations

import sys

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError


# The oldest managed-node Python the modules support (README "Installing the collection"): Debian
# 11's 3.9, and the oldest the pinned pyroute2 (0.9.x) installs on. The code itself stays 3.8
# syntax (ansible-test sanity), but nothing is tested below this, so a module refuses to run.
MIN_PYTHON = (3, 9)


def python_too_old(version_info=None):
    """The message refusing this interpreter, or None when it is new enough."""
    v = tuple(version_info or sys.version_info)[:3]
    if v[:2] >= MIN_PYTHON:
        return None
    return ('barepod.linux modules need Python %d.%d or newer on the managed node; %s is Python %s '
            '(set ansible_python_interpreter to a newer one)'
            % (MIN_PYTHON + (sys.executable or 'this interpreter', '.'.join(str(x) for x in v))))


def module_result(res, want_diff, warn):
    """The manager's result as exit_json takes it: warnings through warn(), diff only when asked."""
    out = dict(res)
    diff = out.pop('diff', None)
    for w in out.pop('warnings', None) or ():
        warn(w)
    if want_diff and diff is not None:
        out['diff'] = diff
    return out


def run_module(name, spec, manager, requires=(), echo=None):
    """main() of a barepod module.

    spec: the AnsibleModule keyword arguments (argument_spec and constraints, from _specs);
    manager: a callable ``(params, check_mode=, diff=)`` returning an object with ``run()``;
    requires: ``(library name, available, import error)`` triples checked before anything runs,
    or ``(library name, available, import error, needed)`` where ``needed(params)`` says whether
    this run uses the library at all;
    echo: ``echo(params)`` -> the module_args to return as the invocation instead of all the
    parameters (None: Ansible's own), for arguments too large to echo back.
    """
    module = AnsibleModule(supports_check_mode=True, **spec)
    too_old = python_too_old()
    if too_old:
        module.fail_json(msg=too_old)
    for req in requires:
        lib, ok, err = req[:3]
        if not ok and (len(req) < 4 or req[3](module.params)):
            module.fail_json(msg=missing_required_lib(lib), exception=str(err))
    try:
        res = manager(module.params, check_mode=module.check_mode, diff=module._diff).run()
    except BarepodError as e:
        module.fail_json(msg=e.msg)
    except (IOError, OSError) as e:
        module.fail_json(msg='%s: %s' % (name, e))
    out = module_result(res, module._diff, module.warn)
    args = echo(module.params) if echo is not None else None
    if args is not None:
        out['invocation'] = dict(module_args=args)
    module.exit_json(**out)
