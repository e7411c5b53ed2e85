#!/usr/bin/env bash
# `make run`: serve Draupnir on this machine for trying it out. Loop-mounts a
# btrfs file at the data path if it is not on btrfs, writes a development
# config (random shared secret) under $DEV_DIR on the first run, and starts
# the server with the embedded state cluster and a demo image. Once the
# server serves, it prints how to use it.
#
# DATA_PATH (default /var/lib/draupnir-dev) goes into the config the first
# run writes; given on a later run, it overrides the config's data_path for
# that run (DRAUPNIR_DATA_PATH), and the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV_DIR=${DEV_DIR:-.dev}
if [ "$(id -u)" != 0 ]; then
  echo "make run needs root (btrfs, loop devices, running postgres as the postgres user)" >&2
  exit 1
fi
mkdir -p "$DEV_DIR"
dev=$(cd "$DEV_DIR" && pwd)
config="$DEV_DIR/config.toml"
if [ ! -f "$config" ]; then
  secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  (umask 077; cat >"$config") <<TOML
# Development configuration written by make run. See draupnir.example.toml.
data_path = "${DATA_PATH:-/var/lib/draupnir-dev}"
environment = "development"
shared_secret = "$secret"
public_hostname = "localhost"

[http]
insecure_port = 8080
port = 0

[ssh]
port = 2222
upload_authorized_keys = "$dev/upload_authorized_keys"
authorized_keys = "$dev/authorized_keys"
TOML
  touch "$DEV_DIR/upload_authorized_keys" "$DEV_DIR/authorized_keys"
fi
# Top-level keys come before the first [table].
config_data_path=$(sed -n '/^\[/q; s/^data_path *= *"\(.*\)"/\1/p' "$config")
if [ -n "${DATA_PATH:-}" ] && [ "$DATA_PATH" != "$config_data_path" ]; then
  echo "make run: DATA_PATH=$DATA_PATH overrides data_path = \"$config_data_path\" of $config for this run" >&2
  export DRAUPNIR_DATA_PATH=$DATA_PATH
fi
./bin/draupnir --config "$config" setup --size "${SIZE:-20G}"

secret=$(sed -n 's/^shared_secret = "\(.*\)"/\1/p' "$config")
# The ports and key files as the config has them (edited configs choose their own).
http_port=$(sed -n '/^\[http\]/,/^\[/s/^insecure_port *= *\([0-9]*\).*/\1/p' "$config")
ssh_port=$(sed -n '/^\[ssh\]/,/^\[/s/^port *= *\([0-9]*\).*/\1/p' "$config")
upload_keys=$(sed -n '/^\[ssh\]/,/^\[/s/^upload_authorized_keys *= *"\(.*\)"/\1/p' "$config")
http_port=${DRAUPNIR_HTTP_INSECURE_PORT:-${http_port:-8080}}
ssh_port=${DRAUPNIR_SSH_PORT:-${ssh_port:-2222}}
upload_keys=${DRAUPNIR_SSH_UPLOAD_AUTHORIZED_KEYS:-$upload_keys}
bin=$(pwd)/bin

# The banner waits for the server: it is printed only once every door
# listens, never for a server that then refuses to start. The server keeps
# this shell's pid (exec), which is how the waiter knows it is still alive.
ready="$DEV_DIR/ready"
rm -f "$ready"
server=$$
(
  while [ ! -e "$ready" ]; do
    kill -0 "$server" 2>/dev/null || exit 0 # it failed and said why
    sleep 0.2
  done
  cat <<MSG

  Draupnir is serving on http://localhost:$http_port and SSH port $ssh_port (config: $config).
  Upload principal token (shared_secret): $secret
  The first start builds a demo image (pgbench) in a few seconds; then, for example:

    export PATH="$bin:\$PATH" DRAUPNIR_URL=http://localhost:$http_port DRAUPNIR_TOKEN=$secret
    draupnir-client images list
    draupnir-client new     # an instance of the newest image, and the line that connects psql to it

  Upload keys go in $upload_keys (read again at every login).
  No key yet? ssh-keygen -t ed25519 -N '' -f ~/.ssh/id_ed25519
    cat ~/.ssh/id_ed25519.pub >> $upload_keys
  Then upload a backup into image N (draupnir-client images create prints N):
    scp -P $ssh_port base.tar.gz pg_wal.tar.gz upload@localhost:/draupnir/image_uploads/N/

  Stop with Ctrl-C; instances keep running.

MSG
) &
exec ./bin/draupnir --config "$config" serve --demo --ready-file "$ready"
