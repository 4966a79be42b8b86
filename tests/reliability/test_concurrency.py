"""Concurrency (issue 7): ten pods brought up by parallel runs on one node, and parallel rule
syncs. Distinct addresses, no lost pod record or record section, every pod converged; the
iptables-restore batches of parallel runs do not lose each other's chains."""
import concurrent.futures

from _node import run_module_in
from test_drift import kube_dns, svc_args
from test_faults import warm_up

N = 10
SECTIONS = ('cgroups', 'containers', 'network', 'sandbox')


def check_pods(node, names, baseline):
    recs = dict((r['name'], r) for r in node.records())
    assert sorted(recs) == sorted(names)                    # no lost records
    for name, rec in recs.items():
        missing = [s for s in SECTIONS if not rec.get(s)]
        assert not missing, (name, missing)                 # no lost sections
    ips = [r['network']['ip'] for r in recs.values()]
    assert len(set(ips)) == N, ips                          # distinct addresses
    snap = node.snapshot()
    assert sorted(snap['ipam']) == sorted(ips), snap['ipam']
    veths = sorted(set(snap['links']) - set(baseline['links']))
    assert veths == sorted(r['network']['host_ifname'] for r in recs.values())
    chains = list(set(snap['chains']) - set(baseline['chains']))
    assert len(chains) == N and all(c.startswith('nat/CNI-') for c in chains), chains
    kinds = [p.split(':')[0] for p in snap['processes']]
    assert kinds.count('pause') == N and kinds.count('container') == N, snap['processes']
    return recs


def test_ten_pods_in_parallel_module_runs(node, worker, reliability_log):
    """Ten processes, each bringing one pod up through the role's modules, all at once."""
    baseline = warm_up(node, worker)
    manifests = [node.manifest_dict('par-%d' % i) for i in range(N)]
    with concurrent.futures.ThreadPoolExecutor(N) as ex:
        results = list(ex.map(lambda m: worker(node, 'up', [m]), manifests))
    assert not [r for r in results if r.get('failed')], results
    check_pods(node, [m['metadata']['name'] for m in manifests], baseline)
    again = worker(node, 'up', manifests)
    assert all(r['changed'] == [] for r in again['results']), again
    with concurrent.futures.ThreadPoolExecutor(N) as ex:
        results = list(ex.map(lambda m: worker(node, 'down', [m]), manifests))
    assert not [r for r in results if r.get('failed')], results
    assert node.snapshot() == baseline
    reliability_log('fault', '%d parallel pod bring-ups (module processes)' % N, 'survived', leaks=0)


def test_ten_pods_in_parallel_playbooks(node, worker, reliability_log):
    """Ten ansible-playbook pod_up processes at once on one node."""
    baseline = warm_up(node, worker)
    files = [node.manifest('pb-%d' % i) for i in range(N)]
    with concurrent.futures.ThreadPoolExecutor(N) as ex:
        results = list(ex.map(lambda f: node.playbook('pod_up.yml', [f], timeout=600), files))
    failed = [r[3] for r in results if r[0] != 0]
    assert not failed, failed
    check_pods(node, ['pb-%d' % i for i in range(N)], baseline)
    # converged (checked, and torn down, through the same modules in one process: ten more
    # sequential playbook runs would only add minutes)
    manifests = [node.manifest_dict('pb-%d' % i) for i in range(N)]
    again = worker(node, 'up', manifests, check=True)
    assert all(r['changed'] == [] for r in again['results']), again
    worker(node, 'down', manifests)
    assert node.snapshot() == baseline
    reliability_log('fault', '%d parallel ansible-playbook pod_up runs' % N, 'survived', leaks=0)


def test_parallel_rule_syncs_are_serialised(node, reliability_log):
    """Ten kube_svc_rules runs at once, each with its own chain prefix, into the same tables: every
    run's chains and jumps are there afterwards (no batch lost another's), each run is converged."""
    prefixes = ['BP%d' % i for i in range(N)]

    def sync(prefix, **kw):
        return run_module_in(node, 'kube_svc_rules', svc_args(node, kube_dns(), chain_prefix=prefix, **kw))

    with concurrent.futures.ThreadPoolExecutor(N) as ex:
        results = list(ex.map(sync, prefixes))
    assert all(r['_rc'] == 0 and r['changed'] for r in results), [(r.get('msg'), r.get('_stderr')) for r in results if r['_rc'] != 0]
    nat = node.rules('nat')
    for p in prefixes:
        assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j %s-SERVICES' % p in nat, p
        assert sum(1 for ln in nat if ln.startswith('-A %s-SEP-' % p)) >= 4, p
    for p in prefixes:
        r = sync(p, resync='always')
        assert r['_rc'] == 0 and not r['changed'], (p, r.get('chains'))
    with concurrent.futures.ThreadPoolExecutor(N) as ex:
        results = list(ex.map(lambda p: sync(p, state='absent'), prefixes))
    assert all(r['_rc'] == 0 for r in results)
    assert not [c for c in node.chains() if '/BP' in c]
    reliability_log('fault', '%d parallel kube_svc_rules syncs into one table set' % N, 'survived')
