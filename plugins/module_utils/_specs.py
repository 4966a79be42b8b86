# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The argument specs of the barepod modules (but kube_svc_rules), in one place.

Each function returns the keyword arguments of AnsibleModule (argument_spec and the
constraints between options) as a fresh dict. The modules pass them to AnsibleModule; the
pod_converged check (_podconverge) validates the role's arguments with the very same specs,
so a converged pod is judged with exactly the types, defaults and constraints a real task
would use. Shared defaults come from _defaults (the module docs are held to these specs by
tests/unit/plugins/module_utils/test__defaults.py).
"""

from __future__ import annotations

from ansible_collections.barepod.linux.plugins.module_utils import _defaults as D


def chroot_rootfs():
    return dict(
        argument_spec=dict(
            path=dict(type='path'),
            rootfs_root=dict(type='path', default=D.ROOTFS_ROOT),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            binaries=dict(type='list', elements='str', default=[]),
            busybox=dict(type='bool', default=False),
            busybox_path=dict(type='path', default='/bin/busybox'),
            image=dict(type='path'),
            image_format=dict(type='str', choices=['auto', 'dir', 'tar', 'oci', 'docker-archive'], default='auto'),
            mounts=dict(type='list', elements='dict', default=[], options=dict(
                type=dict(type='str', choices=['bind', 'tmpfs'], default='bind'),
                source=dict(type='path'),
                target=dict(type='str', required=True),
                read_only=dict(type='bool', default=False),
                size=dict(type='str'),
                options=dict(type='list', elements='str'),
            )),
            shm_size=dict(type='str', default='64Mi'),
            etc_files=dict(type='bool', default=True),
            hostname=dict(type='str'),
            subdomain=dict(type='str'),
            pod_ips=dict(type='list', elements='str'),
            host_aliases=dict(type='list', elements='dict', options=dict(
                ip=dict(type='str', required=True),
                hostnames=dict(type='list', elements='str', required=True),
            )),
            dns=dict(type='dict', options=dict(
                nameservers=dict(type='list', elements='str'),
                searches=dict(type='list', elements='str'),
                options=dict(type='list', elements='str'),
            )),
            allowed_host_paths=dict(type='list', elements='path', default=[]),
            namespace=dict(type='str'),
            name=dict(type='str'),
            container=dict(type='str'),
            pod_uid=dict(type='str'),
            state_root=dict(type='path', default=D.STATE_ROOT),
        ),
        required_together=[('namespace', 'name')],
        required_one_of=[('path', 'pod_uid')],
    )


def cgroup_limit():
    return dict(
        argument_spec=dict(
            pod_uid=dict(type='str', required=True),
            container=dict(type='str'),
            containers=dict(type='list', elements='dict'),
            resources=dict(type='dict'),
            qos_class=dict(type='str', choices=['Guaranteed', 'Burstable', 'BestEffort']),
            parent=dict(type='str', default=D.CGROUP_PARENT),
            memory_limit=dict(type='str'),
            swap=dict(type='str'),
            swappiness=dict(type='int'),
            oom_kill_disable=dict(type='bool'),
            pids_max=dict(type='str'),
            cpuset_cpus=dict(type='str'),
            cpuset_mems=dict(type='str'),
            cpu_period=dict(type='int', default=100000),
            controllers=dict(type='list', elements='str'),
            pids=dict(type='list', elements='int'),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            on_processes=dict(type='str', choices=['fail', 'kill', 'move'], default='fail'),
            cgroup_root=dict(type='path', default=D.CGROUP_ROOT),
            mountinfo=dict(type='path', default=D.MOUNTINFO),
            hierarchy=dict(type='str', choices=['auto', 'v1', 'v2', 'hybrid'], default='auto'),
            namespace=dict(type='str'),
            name=dict(type='str'),
            state_root=dict(type='path', default=D.STATE_ROOT),
        ),
        required_together=[('namespace', 'name')],
    )


def veth_net():
    return dict(
        argument_spec=dict(
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            pod_uid=dict(type='str', aliases=['uid']),
            container_id=dict(type='str'),
            namespace=dict(type='str'),
            name=dict(type='str'),
            state_root=dict(type='path', default=D.STATE_ROOT),
            netns=dict(type='path'),
            network=dict(type='str', default=D.NETWORK),
            subnet=dict(type='str'),
            range_start=dict(type='str'),
            range_end=dict(type='str'),
            gateway=dict(type='str'),
            ip=dict(type='str'),
            bridge=dict(type='str', default=D.BRIDGE),
            ifname=dict(type='str', default=D.IFNAME),
            host_ifname=dict(type='str'),
            mtu=dict(type='int', default=D.MTU),
            hairpin_mode=dict(type='bool', default=True),
            ip_masq=dict(type='bool', default=True),
            ip_forward=dict(type='bool', default=True),
            data_dir=dict(type='path', default=D.CNI_DATA_DIR),
            gc=dict(type='bool', default=False),
        ),
        required_if=[('state', 'present', ['subnet']), ('state', 'absent', ['pod_uid'])],
        required_together=[('namespace', 'name')],
    )


def pod_status():
    return dict(
        argument_spec=dict(
            name=dict(type='str'),
            namespace=dict(type='str'),
            manifest=dict(type='dict'),
            host_ip=dict(type='str'),
            node=dict(type='str'),
            selector=dict(type='dict'),
            update=dict(type='bool', default=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            force=dict(type='bool', default=False),
            state_root=dict(type='path', default=D.STATE_ROOT),
        ),
        required_by=dict(manifest=['name']),
        required_if=[('state', 'absent', ['name'])],
    )


def ns_sandbox():
    return dict(
        argument_spec=dict(
            name=dict(type='str', required=True),
            namespace=dict(type='str', default='default'),
            pod_uid=dict(type='str', aliases=['uid']),
            state=dict(type='str', choices=['present', 'absent', 'restarted'], default='present'),
            containers=dict(type='list', elements='dict', default=[], options=dict(
                name=dict(type='str', required=True),
                rootfs=dict(type='path', required=True),
                command=dict(type='list', elements='str'),
                args=dict(type='list', elements='str'),
                env=dict(type='list', elements='dict'),
                working_dir=dict(type='str', aliases=['workingDir']),
                security_context=dict(type='dict', aliases=['securityContext'], options=dict(
                    run_as_user=dict(type='int', aliases=['runAsUser']),
                    run_as_group=dict(type='int', aliases=['runAsGroup']),
                )),
                cgroups=dict(type='list', elements='path', default=[]),
            )),
            prune_containers=dict(type='bool', default=True),
            share_process_namespace=dict(type='bool', default=False, aliases=['shareProcessNamespace']),
            namespaces=dict(type='list', elements='str', default=['pid', 'net', 'mnt', 'uts', 'ipc']),
            hostname=dict(type='str'),
            grace_period=dict(type='float', default=D.GRACE_PERIOD, aliases=['terminationGracePeriodSeconds']),
            pause=dict(type='str', choices=['auto', 'c', 'busybox'], default='auto'),
            pause_dir=dict(type='path', default=D.PAUSE_DIR),
            state_root=dict(type='path', default=D.STATE_ROOT),
            netns_dir=dict(type='path', default=D.NETNS_DIR),
            log_root=dict(type='path', default=D.LOG_ROOT),
        ),
    )


def cgroup_info():
    return dict(
        argument_spec=dict(
            path=dict(type='str', default=D.CGROUP_PARENT),
            max_depth=dict(type='int'),
            report=dict(type='str', choices=['all', 'pods', 'none'], default='pods'),
            require_memory_limit=dict(type='bool', default=True),
            memory_limit_ceiling=dict(type='str'),
            check_node_memory=dict(type='bool', default=True),
            node_memory=dict(type='str'),
            meminfo=dict(type='path', default='/proc/meminfo'),
            check_empty_pods=dict(type='bool', default=True),
            check_cpu_limit_without_request=dict(type='bool', default=True),
            cgroup_root=dict(type='path', default=D.CGROUP_ROOT),
            mountinfo=dict(type='path', default=D.MOUNTINFO),
            hierarchy=dict(type='str', choices=['auto', 'v1', 'v2', 'hybrid'], default='auto'),
        ),
    )


def node_routes():
    return dict(
        argument_spec=dict(
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            nodes=dict(type='list', elements='dict', default=[], options=dict(
                name=dict(type='str'),
                pod_cidr=dict(type='str', required=True),
                node_ip=dict(type='str', required=True),
            )),
            node_name=dict(type='str'),
        ),
    )


def pod_converged():
    return dict(
        argument_spec=dict(steps=dict(type='dict'), pods=dict(type='list', elements='dict')),
        mutually_exclusive=[('steps', 'pods')],
        required_one_of=[('steps', 'pods')],
    )


# The modules the pod role's steps run (pod_converged validates each step's arguments with these).
SPECS = dict(chroot_rootfs=chroot_rootfs, ns_sandbox=ns_sandbox, cgroup_limit=cgroup_limit,
             veth_net=veth_net, pod_status=pod_status)


def kube_svc_rules():
    return dict(
        argument_spec=dict(
            objects=dict(type='list', elements='dict', default=[]),
            src=dict(type='list', elements='path', default=[]),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            chain_prefix=dict(type='str', default='KUBE'),
            node_name=dict(type='str'),
            node_ip=dict(type='str'),
            cluster_cidr=dict(type='str'),
            masquerade_bit=dict(type='int', default=14),
            masquerade_all=dict(type='bool', default=False),
            nodeport_addresses=dict(type='list', elements='str', default=[]),
            nodeport_ips=dict(type='list', elements='str'),
            localhost_nodeports=dict(type='bool', default=True),
            random_fully=dict(type='bool', default=True),
            conntrack_tcp_be_liberal=dict(type='bool'),
            nfacct=dict(type='bool', default=False),
            apply=dict(type='bool', default=True),
            backend=dict(type='str', choices=['auto', 'nft', 'legacy'], default='auto'),
            iptables_save=dict(type='path'),
            iptables_restore=dict(type='path'),
            iptables=dict(type='path'),
            return_payload=dict(type='bool', default=True),
            resync=dict(type='str', choices=['auto', 'always'], default='auto'),
            full_sync_period=dict(type='int', default=3600),
            state_dir=dict(type='path', default='/run/barepod/kube_svc_rules'),
        ),
    )
