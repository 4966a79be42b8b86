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

The arguments are normalised with each module's own argument spec (ARGUMENT_SPECS, kept
identical to the modules' specs by a unit test), so types and defaults match a real task.
"""

from __future__ import annotations

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError

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

# The argument specs of the modules, as their main() declares them (tests/unit compare them).
ARGUMENT_SPECS = {
    "chroot_rootfs": {
        "allowed_host_paths": {"default": [], "elements": "path", "type": "list"},
        "binaries": {"default": [], "elements": "str", "type": "list"},
        "busybox": {"default": False, "type": "bool"},
        "busybox_path": {"default": "/bin/busybox", "type": "path"},
        "container": {"type": "str"},
        "dns": {
            "options": {
                "nameservers": {"elements": "str", "type": "list"},
                "options": {"elements": "str", "type": "list"},
                "searches": {"elements": "str", "type": "list"},
            },
            "type": "dict",
        },
        "etc_files": {"default": True, "type": "bool"},
        "host_aliases": {
            "elements": "dict",
            "options": {
                "hostnames": {"elements": "str", "required": True, "type": "list"},
                "ip": {"required": True, "type": "str"},
            },
            "type": "list",
        },
        "hostname": {"type": "str"},
        "image": {"type": "path"},
        "image_format": {"choices": ["auto", "dir", "tar", "oci", "docker-archive"], "default": "auto", "type": "str"},
        "mounts": {
            "default": [],
            "elements": "dict",
            "options": {
                "options": {"elements": "str", "type": "list"},
                "read_only": {"default": False, "type": "bool"},
                "size": {"type": "str"},
                "source": {"type": "path"},
                "target": {"required": True, "type": "str"},
                "type": {"choices": ["bind", "tmpfs"], "default": "bind", "type": "str"},
            },
            "type": "list",
        },
        "name": {"type": "str"},
        "namespace": {"type": "str"},
        "path": {"type": "path"},
        "pod_ips": {"elements": "str", "type": "list"},
        "pod_uid": {"type": "str"},
        "rootfs_root": {"default": "/var/lib/barepod/rootfs", "type": "path"},
        "shm_size": {"default": "64Mi", "type": "str"},
        "state": {"choices": ["present", "absent"], "default": "present", "type": "str"},
        "state_root": {"default": "/run/barepod/pods", "type": "path"},
        "subdomain": {"type": "str"},
    },
    "ns_sandbox": {
        "containers": {
            "default": [],
            "elements": "dict",
            "options": {
                "args": {"elements": "str", "type": "list"},
                "cgroups": {"default": [], "elements": "path", "type": "list"},
                "command": {"elements": "str", "type": "list"},
                "env": {"elements": "dict", "type": "list"},
                "name": {"required": True, "type": "str"},
                "rootfs": {"required": True, "type": "path"},
                "security_context": {
                    "aliases": ["securityContext"],
                    "options": {
                        "run_as_group": {"aliases": ["runAsGroup"], "type": "int"},
                        "run_as_user": {"aliases": ["runAsUser"], "type": "int"},
                    },
                    "type": "dict",
                },
                "working_dir": {"aliases": ["workingDir"], "type": "str"},
            },
            "type": "list",
        },
        "grace_period": {"aliases": ["terminationGracePeriodSeconds"], "default": 30, "type": "float"},
        "hostname": {"type": "str"},
        "log_root": {"default": "/var/log/pods", "type": "path"},
        "name": {"required": True, "type": "str"},
        "namespace": {"default": "default", "type": "str"},
        "namespaces": {"default": ["pid", "net", "mnt", "uts", "ipc"], "elements": "str", "type": "list"},
        "netns_dir": {"default": "/run/netns", "type": "path"},
        "pause": {"choices": ["auto", "c", "busybox"], "default": "auto", "type": "str"},
        "pause_dir": {"default": "/var/lib/barepod/pause", "type": "path"},
        "prune_containers": {"default": True, "type": "bool"},
        "share_process_namespace": {"aliases": ["shareProcessNamespace"], "default": False, "type": "bool"},
        "state": {"choices": ["present", "absent", "restarted"], "default": "present", "type": "str"},
        "state_root": {"default": "/run/barepod/pods", "type": "path"},
        "uid": {"type": "str"},
    },
    "cgroup_limit": {
        "cgroup_root": {"default": "/sys/fs/cgroup", "type": "path"},
        "container": {"type": "str"},
        "containers": {"elements": "dict", "type": "list"},
        "controllers": {"elements": "str", "type": "list"},
        "cpu_period": {"default": 100000, "type": "int"},
        "cpuset_cpus": {"type": "str"},
        "cpuset_mems": {"type": "str"},
        "hierarchy": {"choices": ["auto", "v1", "v2", "hybrid"], "default": "auto", "type": "str"},
        "memory_limit": {"type": "str"},
        "mountinfo": {"default": "/proc/self/mountinfo", "type": "path"},
        "name": {"type": "str"},
        "namespace": {"type": "str"},
        "on_processes": {"choices": ["fail", "kill", "move"], "default": "fail", "type": "str"},
        "oom_kill_disable": {"type": "bool"},
        "parent": {"default": "kubepods", "type": "str"},
        "pids": {"elements": "int", "type": "list"},
        "pids_max": {"type": "str"},
        "pod_uid": {"required": True, "type": "str"},
        "qos_class": {"choices": ["Guaranteed", "Burstable", "BestEffort"], "type": "str"},
        "resources": {"type": "dict"},
        "state": {"choices": ["present", "absent"], "default": "present", "type": "str"},
        "state_root": {"default": "/run/barepod/pods", "type": "path"},
        "swap": {"type": "str"},
        "swappiness": {"type": "int"},
    },
    "veth_net": {
        "bridge": {"default": "cni0", "type": "str"},
        "container_id": {"type": "str"},
        "data_dir": {"default": "/var/lib/cni/networks", "type": "path"},
        "gateway": {"type": "str"},
        "gc": {"default": False, "type": "bool"},
        "hairpin_mode": {"default": True, "type": "bool"},
        "host_ifname": {"type": "str"},
        "ifname": {"default": "eth0", "type": "str"},
        "ip": {"type": "str"},
        "ip_forward": {"default": True, "type": "bool"},
        "ip_masq": {"default": True, "type": "bool"},
        "mtu": {"default": 1500, "type": "int"},
        "name": {"type": "str"},
        "namespace": {"type": "str"},
        "netns": {"type": "path"},
        "network": {"default": "barepod", "type": "str"},
        "range_end": {"type": "str"},
        "range_start": {"type": "str"},
        "state": {"choices": ["present", "absent"], "default": "present", "type": "str"},
        "state_root": {"default": "/run/barepod/pods", "type": "path"},
        "subnet": {"type": "str"},
        "uid": {"type": "str"},
    },
    "pod_status": {
        "force": {"default": False, "type": "bool"},
        "host_ip": {"type": "str"},
        "manifest": {"type": "dict"},
        "name": {"type": "str"},
        "namespace": {"type": "str"},
        "node": {"type": "str"},
        "selector": {"type": "dict"},
        "state": {"choices": ["present", "absent"], "default": "present", "type": "str"},
        "state_root": {"default": "/run/barepod/pods", "type": "path"},
        "update": {"default": True, "type": "bool"},
    },
}

_VALIDATORS = {}


def module_params(module, args):
    """args normalised as AnsibleModule would (types, defaults, suboptions); errors name the field."""
    v = _VALIDATORS.get(module)
    if v is None:
        v = _VALIDATORS[module] = ArgumentSpecValidator(ARGUMENT_SPECS[module])
    res = v.validate(dict((k, val) for k, val in (args or {}).items() if val is not None))
    if res.error_messages:
        raise BarepodError("%s: %s" % (module, "; ".join(res.error_messages)), field=module, value=None)
    return res.validated_parameters


def _iptables():
    import shutil
    from ansible_collections.barepod.linux.plugins.module_utils._veth import Iptables

    return Iptables(
        shutil.which("iptables-save") or "iptables-save", shutil.which("iptables-restore") or "iptables-restore"
    )


def run_module_logic(module, args, check_mode=True, iptables=None):
    """What plugins/modules/<module>.py does after AnsibleModule: the result dict (with changed)."""
    p = module_params(module, args)
    if module == "chroot_rootfs":
        from ansible_collections.barepod.linux.plugins.module_utils._rootfs import run as run_rootfs

        res = run_rootfs(p, check_mode=check_mode)
        res.pop("warnings", None)
    elif module == "ns_sandbox":
        from ansible_collections.barepod.linux.plugins.module_utils._sandbox import SandboxManager

        res = SandboxManager(p, check_mode=check_mode).run()
    elif module == "cgroup_limit":
        from ansible_collections.barepod.linux.plugins.module_utils._cgroups import run_limit

        res = run_limit(p, check_mode=check_mode)
        res.pop("warnings_", None)
    elif module == "veth_net":
        from ansible_collections.barepod.linux.plugins.module_utils._veth import VethNet

        mgr = VethNet(p, check_mode=check_mode, iptables=iptables or _iptables())
        res = dict(mgr.run(), changed=mgr.changed)
    elif module == "pod_status":
        from ansible_collections.barepod.linux.plugins.module_utils._podstatus import PodStatusManager

        res = PodStatusManager(p, check_mode=check_mode).run()
    else:
        raise BarepodError("unknown module %r" % module, field="module", value=module)
    res.pop("diff", None)
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
        # a new (or changed) Pod: the record step would write before the rootfs step validates
        # its input. Check the rootfs arguments now (protected hostPaths, images, mount
        # targets), so a refused manifest fails before any change, leaving no pod record.
        for a in with_inputs("rootfs", steps["rootfs"], known):
            run_module_logic(STEP_MODULES["rootfs"], a, True, iptables)
    run = list(STEPS[STEPS.index(first) :]) if first else []
    return dict(converged=first is None, run=run, checked=known, changes=reason or [])


def check_many(pods, iptables=None):
    """check_steps for each pod (one process for all of them); errors name the pod's index."""
    out = []
    for i, steps in enumerate(pods):
        try:
            out.append(check_steps(steps, iptables))
        except BarepodError as e:
            raise BarepodError("pods[%d]: %s" % (i, e.msg), field="pods", value=i)
    return out
