#!/usr/bin/env bash
# Jupyter Enterprise Gateway for the remote-kernel tests (`make gateway`): its own virtualenv,
# because Enterprise Gateway 3.3 (the latest) pins jupyter_client<7, jupyter_server<2, pyzmq<25
# and tornado<7, which kernelagent's environment cannot have. Kernels started through it run
# kernelagent's own Python (the tests give it that kernelspec). A no-op when it is there.
#
# Environment: KERNELAGENT_EG_VENV (default /var/lib/kernelagent-eg/venv).
set -euo pipefail
VENV=${KERNELAGENT_EG_VENV:-/var/lib/kernelagent-eg/venv}
PYTHON=${PYTHON:-python3}
if [ -x "$VENV/bin/jupyter-enterprisegateway" ]; then
    exit 0
fi
echo "gateway: installing Jupyter Enterprise Gateway into $VENV" >&2
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
constraints=$(mktemp)
printf 'jupyter_client<7\npyzmq<25\njupyter_server<2\ntornado<7\n' > "$constraints"
"$VENV/bin/pip" install --quiet -c "$constraints" 'jupyter_enterprise_gateway>=3.2,<4'
rm -f "$constraints"
