#!/bin/sh
# The minio-init job of docker-compose.yml, at every `docker compose up`, once MinIO is
# healthy: the buckets, and a user per service with its policy of this folder (the server
# checkout-server, the runners checkout-runner; the relays use no object storage). Safe to run
# again: buckets kept, policies and secret keys replaced by the files' current ones.
#   MINIO_URL                 e.g. http://minio:9000
#   MINIO_ROOT_USER           MinIO's root user, and MINIO_ROOT_PASSWORD_FILE its password
#   BUCKETS                   the buckets to make, space-separated (the server's ALLOWED_BUCKETS)
#   SERVER_SECRET_KEY_FILE    checkout-server's secret key
#   RUNNER_SECRET_KEY_FILE    checkout-runner's secret key
# Runs with the `mc` and `sh` of the MinIO image; tests/integration/test_minio_init.py runs it
# against a real MinIO.
set -eu
policies=$(dirname "$0")

mc alias set checkout "$MINIO_URL" "$MINIO_ROOT_USER" "$(cat "$MINIO_ROOT_PASSWORD_FILE")" >/dev/null
for bucket in $BUCKETS; do
    mc mb --ignore-existing "checkout/$bucket"
done

# A user named after its policy, deploy/minio/<name>.json.
user() {
    mc admin policy create checkout "$1" "$policies/$1.json"
    mc admin user add checkout "$1" "$(cat "$2")" >/dev/null
    # Attaching a policy attached already is an error of its own: only that one passes.
    if ! out=$(mc admin policy attach checkout "$1" --user "$1" 2>&1); then
        case "$out" in
            *"already in effect"*) ;;
            *) echo "$out" >&2; exit 1 ;;
        esac
    fi
    echo "MinIO user $1: policy $1"
}
user checkout-server "$SERVER_SECRET_KEY_FILE"
user checkout-runner "$RUNNER_SECRET_KEY_FILE"
