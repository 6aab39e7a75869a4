#!/usr/bin/env bash
# Idempotent set-up of a development or CI machine: DCMTK, a running RabbitMQ on
# 127.0.0.1:5672, and .venv with the package and its dev tools. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

# DCMTK: the real DICOM peers the tests and the quick start use.
if ! command -v storescu >/dev/null || ! command -v echoscu >/dev/null; then
  log "installing dcmtk (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk >/dev/null
fi

# Orthanc: a receiver bench/ingest.py compares the bridge with. The package starts it as a
# service on 4242/8042; the bench starts its own instances, so the service is stopped and
# disabled (where there is no service manager, or it is not running, that is no error).
if ! command -v Orthanc >/dev/null && [ ! -x /usr/sbin/Orthanc ]; then
  log "installing orthanc (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc >/dev/null
  # Each of these may be missing or fail (no systemd running, service not started).
  as_root systemctl disable --now orthanc >/dev/null 2>&1 || true
  as_root service orthanc stop >/dev/null 2>&1 || true
  as_root update-rc.d orthanc disable >/dev/null 2>&1 || true
fi

# RabbitMQ: start it if nothing listens on 5672.
broker_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! broker_up; then
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing rabbitmq-server (apt)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  log "starting rabbitmq-server"
  as_root rabbitmq-server -detached || true
  for _ in $(seq 1 60); do broker_up && break; sleep 1; done
  broker_up || { log "RabbitMQ did not come up on 127.0.0.1:5672"; exit 1; }
fi
log "RabbitMQ is listening on 127.0.0.1:5672"

# Python environment.
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing the package and dev tools into .venv"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import bridge, pynetdicom, aio_pika' || { log "install failed"; exit 1; }
  touch "$stamp"
fi

# Node.js: the example consumer in examples/node-consumer and its test.
if ! command -v node >/dev/null; then
  log "installing nodejs and npm (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
elif ! command -v npm >/dev/null; then
  log "installing npm (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
fi
node_example=examples/node-consumer
if [ ! -d "$node_example/node_modules" ] \
    || [ "$node_example/package-lock.json" -nt "$node_example/node_modules" ]; then
  log "installing the Node example's dependencies (npm ci, $(node --version))"
  npm ci --no-audit --no-fund --prefix "$node_example" >/dev/null \
    || { log "npm ci failed in $node_example"; exit 1; }
  touch "$node_example/node_modules"
fi
log "ready"
