#!/usr/bin/env bash
# ansible-test sanity on the collection, from a copy laid out as ansible_collections/barepod/linux
# (ansible-test requires that path). Offline-safe: the get-pip bootstrap ansible-test would
# download is replaced by tests/sanity/get_pip_offline.py (ensurepip + the package index).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$repo/.venv"
work="${SANITY_WORKDIR:-${TMPDIR:-/tmp}/barepod-sanity}"
dest="$work/ansible_collections/barepod/linux"
pipver="$("$venv/bin/python" - <<'PY'
import re, ansible_test, os
src = open(os.path.join(os.path.dirname(ansible_test.__file__), '_internal', 'python_requirements.py')).read()
m = re.search(r"pip='([0-9.]+)'", src)
print(m.group(1) if m else '24.2')
PY
)"
cache="$HOME/.ansible/test/cache/get_pip_${pipver//./_}.py"
mkdir -p "$(dirname "$cache")"
[ -s "$cache" ] || cp "$repo/tests/sanity/get_pip_offline.py" "$cache"
# a git-tracked file list keeps ansible-test from scanning untracked build output
rm -rf "$dest"
mkdir -p "$dest"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents -P {} "$dest/")
cd "$dest"
# Targets: what the collection ships (plugins, roles, playbooks, meta, tools). The test suites and
# benchmarks are linted by ruff instead (pylint's disallowed-name "_" and the shebang rule fight
# pytest idioms and runnable bench scripts); examples/ holds multi-document manifests on purpose
# (a Service with its EndpointSlice), which the yamllint sanity test forbids.
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- "$@" plugins/ roles/ playbooks/ meta/ tools/
fi
"$venv/bin/ansible-test" sanity --local --python 3.11 --requirements --color no "$@"
