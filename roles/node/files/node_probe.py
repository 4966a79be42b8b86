# Read-only probe of a node, run once per play by the node role with the node's python3 (one module round
# trip instead of one per check). argv: JSON {"packages": [...], "sysctls": [...], "sysctl_file": path}.
# Prints JSON: python, pyroute2 (version or null), site (where a copied pyroute2 goes), packages
# ({name: installed}), sysctls ({key: value or null when the key does not exist}), sysctl_file ({key: value}).
import json
import os
import subprocess
import sys


def main(args):
    out = {'python': sys.executable, 'packages': {}, 'sysctls': {}, 'sysctl_file': {}}
    try:
        import pyroute2
        out['pyroute2'] = getattr(pyroute2, '__version__', '0')
    except Exception:
        out['pyroute2'] = None
    local = [p for p in sys.path if p.startswith('/usr/local/lib/') and p.endswith(('dist-packages', 'site-packages'))]
    other = [p for p in sys.path if p.endswith(('dist-packages', 'site-packages'))]
    out['site'] = (local or other or [''])[0]
    if args['packages']:
        try:
            p = subprocess.run(['dpkg-query', '-W', '-f=${Package} ${db:Status-Status}\\n'] + args['packages'],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True, check=False)
            seen = dict(line.split(' ', 1) for line in p.stdout.splitlines() if ' ' in line)
        except OSError:
            seen = {}
        out['packages'] = dict((n, seen.get(n) == 'installed') for n in args['packages'])
    for key in args['sysctls']:
        try:
            with open(os.path.join('/proc/sys', key.replace('.', '/'))) as f:
                out['sysctls'][key] = f.read().strip()
        except (IOError, OSError):
            out['sysctls'][key] = None
    try:
        with open(args['sysctl_file']) as f:
            for line in f:
                line = line.split('#', 1)[0].strip()
                if '=' in line:
                    k, v = line.split('=', 1)
                    out['sysctl_file'][k.strip()] = v.strip()
    except (IOError, OSError):
        pass
    print(json.dumps(out))


if __name__ == '__main__':
    main(json.loads(sys.argv[1]))
