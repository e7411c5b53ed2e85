#!/usr/bin/env bash
# `make run`: serve Draupnir on this machine for trying it out. Loop-mounts a
# btrfs file at $DATA_PATH if it is not on btrfs, writes a development config
# (random shared secret) under $DEV_DIR, and starts the server with the
# embedded state cluster and a demo image.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_PATH=${DATA_PATH:-/var/lib/draupnir-dev}
DEV_DIR=${DEV_DIR:-.dev}
if [ "$(id -u)" != 0 ]; then
  echo "make run needs root (btrfs, loop devices, running postgres as the postgres user)" >&2
  exit 1
fi
mkdir -p "$DEV_DIR"
config="$DEV_DIR/config.toml"
if [ ! -f "$config" ]; then
  secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  (umask 077; cat >"$config") <<TOML
# Development configuration written by make run. See draupnir.example.toml.
data_path = "$DATA_PATH"
environment = "development"
shared_secret = "$secret"
public_hostname = "localhost"

[http]
insecure_port = 8080
port = 0

[ssh]
port = 2222
upload_authorized_keys = "$(pwd)/$DEV_DIR/upload_authorized_keys"
authorized_keys = "$(pwd)/$DEV_DIR/authorized_keys"
TOML
  touch "$DEV_DIR/upload_authorized_keys" "$DEV_DIR/authorized_keys"
fi
./bin/draupnir --config "$config" setup --size "${SIZE:-20G}"
secret=$(sed -n 's/^shared_secret = "\(.*\)"/\1/p' "$config")
# The ports as the config has them (edited configs choose their own).
http_port=$(sed -n '/^\[http\]/,/^\[/s/^insecure_port *= *\([0-9]*\).*/\1/p' "$config")
ssh_port=$(sed -n '/^\[ssh\]/,/^\[/s/^port *= *\([0-9]*\).*/\1/p' "$config")
http_port=${DRAUPNIR_HTTP_INSECURE_PORT:-${http_port:-8080}}
ssh_port=${DRAUPNIR_SSH_PORT:-${ssh_port:-2222}}
cat <<MSG

  Draupnir is starting on http://localhost:$http_port (SSH on port $ssh_port).
  Upload principal token (shared_secret): $secret
  The first start builds a demo image (pgbench); then, for example:

    export DRAUPNIR_URL=http://localhost:$http_port DRAUPNIR_TOKEN=$secret
    ./bin/draupnir-client images list
    ./bin/draupnir-client instances create 1
    eval "\$(./bin/draupnir-client env 1)" && psql -c 'select count(*) from pgbench_accounts'

  Config: $config. Stop with Ctrl-C; instances keep running.

MSG
exec ./bin/draupnir --config "$config" serve --demo
