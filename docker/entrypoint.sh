#!/bin/sh
# Fail at once, in one clear line, when a bind-mounted folder a stage writes to is not writable
# by the user the container runs as (compose runs it as UID:GID from docker/.env; Docker creates
# a missing host folder as root). ALEX_WRITABLE lists the folders, space-separated.
#
# ALEX_RESTART_DELAY (seconds; the train service sets it): when the restart policy starts this
# container again (a file left in its own /tmp says so; a new container starts at once), wait
# that long first. A crash anywhere fails every host's torchrun within seconds; until node 0's has
# exited, its rendezvous store is the old job's, and a torchrun that joined it would wait there
# for good (the static rendezvous has no rounds). The wait lets every old torchrun go first.
set -eu
for dir in ${ALEX_WRITABLE:-}; do
  probe="$dir/.alexnet2012-write-test.$$"
  if ! (: > "$probe") 2>/dev/null; then
    owner=$(stat -c %u:%g "$dir" 2>/dev/null || echo "not found")
    echo "alexnet2012: $dir is not writable by uid:gid $(id -u):$(id -g) (owner: $owner)." \
      "On the host, set UID and GID in docker/.env to the folder's owner (echo UID=\$(id -u) GID=\$(id -g))," \
      "or chown the folder; create host folders before the first run (Docker makes missing ones as root)." >&2
    exit 2
  fi
  rm -f "$probe"
done
if [ -n "${ALEX_RESTART_DELAY:-}" ]; then
  started="${TMPDIR:-/tmp}/.alexnet2012-started"
  if [ -e "$started" ]; then
    echo "alexnet2012: restarted; waiting ${ALEX_RESTART_DELAY} s for every host's previous torchrun to stop"
    sleep "$ALEX_RESTART_DELAY"
  fi
  : > "$started"
fi
exec "$@"
