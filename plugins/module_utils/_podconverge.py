# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which steps of the pod role would change: every module's own check-mode logic, in one process.

The pod role converges a pod in a fixed order of module tasks (record, rootfs, sandbox, pod
cgroup, container cgroups, network, /etc/hosts, containers, status). Each task costs a Python
start and the imports (~0.3 s), so a converged pod used to cost ~9 processes. `check_steps`
runs the same managers the modules run (chroot_rootfs, ns_sandbox, cgroup_limit, veth_net,
pod_status), always in check mode, with the exact arguments the role passes to each task, in
the role's order, feeding each step the outputs of the earlier ones (the sandbox's netns path,
the container cgroup paths, the pod IP, the recorded status) as the role does.

It stops at the first step that would change: that step and every later one must run as the
real module tasks (their inputs may depend on what that step does). The steps before it are
converged, and their check-mode results are the same as the real tasks' results would be, so
the role can use them in place of the skipped tasks' registered results.

The arguments are normalised with each module's own argument spec and constraints (_specs,
which the modules hand to AnsibleModule), so types, defaults and required options match a
real task.
"""

from __future__ import annotations

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError, Manager, result
from ansible_collections.barepod.linux.plugins.module_utils._specs import SPECS
from ansible_collections.barepod.linux.plugins.module_utils._cgroups import CgroupLimitManager
from ansible_collections.barepod.linux.plugins.module_utils._podstatus import PodStatusManager
from ansible_collections.barepod.linux.plugins.module_utils._rootfs import ChrootRootfs
from ansible_collections.barepod.linux.plugins.module_utils._sandbox import SandboxManager
from ansible_collections.barepod.linux.plugins.module_utils._veth import VethNet

STEPS = ("record", "rootfs", "sandbox", "cgroup_pod", "cgroup_containers", "network", "hosts", "containers", "status")

# step -> the module whose logic it runs
STEP_MODULES = dict(
    record="pod_status",
    rootfs="chroot_rootfs",
    sandbox="ns_sandbox",
    cgroup_pod="cgroup_limit",
    cgroup_containers="cgroup_limit",
    network="veth_net",
    hosts="chroot_rootfs",
    containers="ns_sandbox",
    status="pod_status",
)

# The modules' own AnsibleModule arguments (argument_spec and constraints), shared with them.
ARGUMENT_SPECS = dict((name, spec()['argument_spec']) for name, spec in SPECS.items())

_VALIDATORS = {}


def module_params(module, args):
    """args normalised as AnsibleModule would (types, defaults, suboptions); errors name the field."""
    v = _VALIDATORS.get(module)
    if v is None:
        v = _VALIDATORS[module] = ArgumentSpecValidator(**SPECS[module]())
    res = v.validate(dict((k, val) for k, val in (args or {}).items() if val is not None))
    if res.error_messages:
        raise BarepodError("%s: %s" % (module, "; ".join(res.error_messages)), field=module, value=None)
    return res.validated_parameters


# module -> its manager (the class its main() hands to _module.run_module)
MANAGERS = dict(
    chroot_rootfs=ChrootRootfs,
    ns_sandbox=SandboxManager,
    cgroup_limit=CgroupLimitManager,
    veth_net=VethNet,
    pod_status=PodStatusManager,
)


def run_module_logic(module, args, check_mode=True, iptables=None):
    """What plugins/modules/<module>.py does after AnsibleModule: the manager's result, without
    diff and warnings. iptables: a backend for veth_net (default: the host's binaries)."""
    if module not in MANAGERS:
        raise BarepodError("unknown module %r" % module, field="module", value=module)
    extra = dict(iptables=iptables) if module == "veth_net" and iptables is not None else {}
    res = MANAGERS[module](module_params(module, args), check_mode=check_mode, **extra).run()
    res.pop("diff", None)
    res.pop("warnings", None)
    return res


def container_cgroups(cgroup_results):
    """Per container, the cgroups it joins: the distinct C(paths) of its cgroup_limit result
    (what the pod_container_specs filter does with the registered loop results)."""
    out = []
    for r in cgroup_results:
        paths = []
        for p in ((r or {}).get("paths") or {}).values():
            if p not in paths:
                paths.append(p)
        out.append(paths)
    return out


def with_inputs(step, args, known):
    """The step's arguments plus the inputs the role takes from earlier tasks' results."""
    if step == "rootfs":
        ip = ((known.get("record") or {}).get("status") or {}).get("podIP")
        return [dict(a, pod_ips=[ip]) if ip else dict(a) for a in args]
    if step == "hosts":
        return [dict(a, pod_ips=[known["network"]["ip"]]) for a in args]
    if step == "network":
        return dict(args, netns=known["sandbox"]["netns_path"])
    if step == "containers":
        cg = container_cgroups(known["cgroup_containers"])
        ctrs = [
            dict(c, cgroups=cg[i]) if i < len(cg) and cg[i] else dict(c)
            for i, c in enumerate(args.get("containers") or [])
        ]
        return dict(args, containers=ctrs)
    return args


def check_steps(steps, iptables=None):
    """Check every step in the role's order; stop at the first that would change.

    steps: step name -> the role's arguments (a dict, or a list of dicts for the per-container
    steps rootfs, cgroup_containers and hosts). Returns dict(converged, run, checked, changes):
    run is the list of steps the role must run for real (the first changing one and all after it),
    checked the check-mode results of the steps checked (a list for per-container steps).
    """
    missing = [s for s in STEPS if s not in steps]
    if missing:
        raise BarepodError("steps: missing %s" % ", ".join(missing), field="steps", value=missing)
    known = {}
    first = None
    reason = None
    for step in STEPS:
        args = with_inputs(step, steps[step], known)
        module = STEP_MODULES[step]
        if step == "hosts":
            before_ip = (known["record"].get("status") or {}).get("podIP")
            changed = before_ip != known["network"].get("ip")
            res = dict(changed=changed, pod_ips=[known["network"].get("ip")])
        elif isinstance(args, list):
            res = [run_module_logic(module, a, True, iptables) for a in args]
            changed = any(r.get("changed") for r in res)
        else:
            res = run_module_logic(module, args, True, iptables)
            changed = bool(res.get("changed"))
        known[step] = res
        if changed:
            first = step
            rs = res if isinstance(res, list) else [res]
            reason = [a for r in rs for a in (r.get("actions") or [])][:20]
            break
    if first == "record":
        validate_rest(steps, known, iptables)
    run = list(STEPS[STEPS.index(first) :]) if first else []
    return dict(converged=first is None, run=run, checked=known, changes=reason or [])


# A new or changed Pod (the record step changes) would have its record written before the later
# steps validate their inputs. These steps' arguments come from the manifest and the role's settings
# (plus the netns path, which the sandbox step does not move), so their check mode, planned against
# what the earlier steps would create, refuses now whatever their module would refuse later. The
# hosts and containers steps are left out: they read the root filesystems the rootfs step may change.
VALIDATED_AFTER_RECORD = ("rootfs", "sandbox", "cgroup_pod", "cgroup_containers", "network")


def validate_rest(steps, known, iptables=None):
    """Check mode of the VALIDATED_AFTER_RECORD steps (a hostPath, an image, a quantity, an
    unavailable controller, a bridge that is not one...) so a refused Pod fails before the role's
    first change, and never after its record, rootfs, sandbox, cgroups and veth exist. The results
    only feed the later steps' inputs: the role runs every one of these steps for real."""
    planned = dict(known)
    for step in VALIDATED_AFTER_RECORD:
        args = with_inputs(step, steps[step], planned)
        module = STEP_MODULES[step]
        if isinstance(args, list):
            planned[step] = [run_module_logic(module, a, True, iptables) for a in args]
        else:
            planned[step] = run_module_logic(module, args, True, iptables)
    return planned


def check_many(pods, iptables=None):
    """check_steps for each pod (one process for all of them); errors name the pod's index."""
    out = []
    for i, steps in enumerate(pods):
        try:
            out.append(check_steps(steps, iptables))
        except BarepodError as e:
            raise BarepodError("pods[%d]: %s" % (i, e.msg), field="pods", value=i)
    return out


class PodConverged(Manager):
    """pod_converged: check_steps (steps) or check_many (pods); read-only, never changed."""

    def run(self):
        if self.params.get("pods") is not None:
            return result(False, pods=check_many(self.params["pods"]))
        return result(False, **check_steps(self.params["steps"]))
