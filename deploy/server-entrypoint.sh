#!/bin/sh
# The server image's entrypoint: started as root, it makes the data directory (a bind mount that
# the engine may have created as root) belong to the server's uid, then runs the server as that
# uid with the Docker socket's group, so that it can start kernel containers. Started with
# --user, it runs the command as it is.
set -eu
UID_GID=10001
SOCKET=${DOCKER_HOST:-unix:///var/run/docker.sock}
SOCKET=${SOCKET#unix://}
if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi
mkdir -p "$KERNELAGENT_DATA_DIR" "$KERNELAGENT_RUNTIME_DIR"
chown "$UID_GID:$UID_GID" "$KERNELAGENT_DATA_DIR" "$KERNELAGENT_RUNTIME_DIR"
groups=$UID_GID
if [ -S "$SOCKET" ]; then
    groups="$UID_GID,$(stat -c %g "$SOCKET")"
fi
exec setpriv --reuid="$UID_GID" --regid="$UID_GID" --groups="$groups" \
    --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"
