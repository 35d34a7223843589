#!/usr/bin/env bash
# Static checks of the collection's Python plugins, run by tests/tests/ansible.rs:
#   1. `ansible-test sanity` on a copy of ansible/ laid out as
#      SCRATCH/ansible_collections/metalfleet/metalfleet (ansible-test insists on that path),
#      with every test that runs offline. Skipped: the tests ansible-test runs in a private
#      virtualenv (ansible-doc, changelog, import, pep8, pylint, pslint, runtime-metadata,
#      validate-modules, yamllint) — it bootstraps pip into each from
#      ci-files.testing.ansible.com, which these machines cannot reach — and shellcheck (not
#      installed; the collection has one shell script, bash -n checks it below).
#   2. what those skipped tests would have caught, offline: `ansible-doc` renders every
#      module's and the inventory plugin's DOCUMENTATION (with the doc fragment), EXAMPLES and
#      RETURN; `bash -n` on metalfleet-supervise
#   3. the module unit tests (tests/unit, plain unittest: no pytest needed)
#
#   sanity.sh SCRATCH
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 SCRATCH" >&2; exit 2; }
SCRATCH=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
COLL="$SCRATCH/ansible_collections/metalfleet/metalfleet"
mkdir -p "$COLL"
cp -a "$ROOT/ansible/." "$COLL/"
rm -rf "$COLL/tests/output"
PY=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')

echo "== ansible-test sanity (python $PY)"
cd "$COLL"
skip=()
for t in ansible-doc changelog import pep8 pylint pslint runtime-metadata validate-modules yamllint shellcheck; do
  skip+=(--skip-test "$t")
done
ansible-test sanity --python "$PY" --color no "${skip[@]}"

echo "== ansible-doc (documentation of every plugin renders)"
export ANSIBLE_COLLECTIONS_PATH="$SCRATCH"
for m in inventory_import network node node_nic project rack rollout site workflow workflow_run; do
  out=$(ansible-doc -t module "metalfleet.metalfleet.$m" 2>&1) || { echo "$out"; echo "ansible-doc $m failed"; exit 1; }
  echo "$out" | grep -q "EXAMPLES" || { echo "$out"; echo "ansible-doc $m: no EXAMPLES"; exit 1; }
  echo "$out" | grep -q "RETURN VALUES" || { echo "$out"; echo "ansible-doc $m: no RETURN"; exit 1; }
  echo "$out" | grep -qi "warning" && { echo "$out"; echo "ansible-doc $m warned"; exit 1; }
  echo "module $m: documented"
done
out=$(ansible-doc -t inventory metalfleet.metalfleet.nodes 2>&1) || { echo "$out"; echo "ansible-doc inventory failed"; exit 1; }
echo "inventory plugin nodes: documented"
bash -n "$COLL/roles/common/files/metalfleet-supervise"

echo "== module unit tests"
cd "$SCRATCH"
PYTHONPATH="$SCRATCH" python3 -m unittest discover -s "$COLL/tests/unit" -v
