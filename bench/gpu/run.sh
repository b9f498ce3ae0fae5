#!/usr/bin/env bash
# The one command for a lent GPU machine (bench/gpu/README.md). Run it from the repository
# root there, with the pack built here first (bench/gpu/pack.py) and carried:
#   bash bench/gpu/run.sh                     # all steps, about 9 minutes, files in $OUT
#   bash bench/gpu/run.sh --only throughput   # extra flags go to bench/gpu/run.py
# Installs the packed wheels into a temporary site (nothing of the machine's own changes),
# points the data sets at the pack and runs bench/gpu/run.py.
set -uo pipefail
cd "$(dirname "$0")/../.."
PACK=${PACK:-.carry/gpu}
SITE=${SITE:-/tmp/medrobust_site}
if compgen -G "$PACK/wheels/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$PACK"/wheels/*.whl || { echo "wheel install failed" >&2; exit 2; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no wheels under $PACK/wheels: using the installed packages" >&2
fi
[[ -d $PACK/data ]] && export MEDROBUST_DATA_ROOT=${MEDROBUST_DATA_ROOT:-$PWD/$PACK/data}
export PYTHONUNBUFFERED=1
exec python3 bench/gpu/run.py "$@"
