#!/usr/bin/env bash
# Start dockerd in the background when it is not already answering (there is no systemd here).
# Idempotent: exits 0 at once when `docker info` works. Logs go to $DOCKERD_LOG, the pid to
# $DOCKERD_PIDFILE (dockerd's own --pidfile). Waits up to $DOCKERD_WAIT seconds for `docker info`.
# Exit codes: 0 running, 1 dockerd did not come up (the log's tail is printed), 2 not installed.
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/barepod-dockerd.log}
DOCKERD_PIDFILE=${DOCKERD_PIDFILE:-/var/run/docker.pid}
DOCKERD_WAIT=${DOCKERD_WAIT:-60}
DOCKER=${DOCKER:-docker}

docker_ok() { "$DOCKER" info >/dev/null 2>&1; }

if ! command -v dockerd >/dev/null 2>&1 || ! command -v "$DOCKER" >/dev/null 2>&1; then
  echo "start-dockerd: dockerd or the docker CLI is not installed (apt-get install docker.io)" >&2
  exit 2
fi

if docker_ok; then
  echo "start-dockerd: docker is already running"
  exit 0
fi

# One starter at a time (CI steps or parallel test sessions may call this together).
exec 9>"${DOCKERD_PIDFILE}.barepod-lock"
flock 9

if ! docker_ok; then
  pid=""
  [ -r "$DOCKERD_PIDFILE" ] && pid=$(cat "$DOCKERD_PIDFILE" 2>/dev/null || true)
  if [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = dockerd ]; then
    echo "start-dockerd: dockerd (pid $pid) is starting; waiting"
  else
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # Fully detached: own session, no terminal, stdio to the log, no inherited descriptors.
    setsid dockerd --pidfile "$DOCKERD_PIDFILE" </dev/null >>"$DOCKERD_LOG" 2>&1 9>&- &
    echo "start-dockerd: started dockerd (pid $!), log $DOCKERD_LOG, pidfile $DOCKERD_PIDFILE"
    pid=$!
  fi
  for _ in $(seq 1 $((DOCKERD_WAIT * 4))); do
    docker_ok && break
    if [ -n "$pid" ] && [ ! -d "/proc/$pid" ]; then
      echo "start-dockerd: dockerd exited; last lines of $DOCKERD_LOG:" >&2
      tail -n 30 "$DOCKERD_LOG" >&2 || true
      exit 1
    fi
    sleep 0.25
  done
  if ! docker_ok; then
    echo "start-dockerd: docker info still fails after ${DOCKERD_WAIT}s; last lines of $DOCKERD_LOG:" >&2
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    exit 1
  fi
fi
echo "start-dockerd: docker is running (server $("$DOCKER" version --format '{{.Server.Version}}' 2>/dev/null))"
