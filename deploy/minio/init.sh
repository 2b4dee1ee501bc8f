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
# (twice) against a real MinIO with devstack's mc.
set -eu
policies=$(dirname "$0")

ready() {
    mc alias set checkout "$MINIO_URL" "$MINIO_ROOT_USER" "$(cat "$MINIO_ROOT_PASSWORD_FILE")" &&
        mc admin user list checkout
}
# MinIO reports healthy before its IAM is up ("Server not initialized yet"): up to a minute.
attempt=1
until ready >/dev/null 2>&1; do
    if [ "$attempt" -ge 60 ]; then
        ready
        exit 1
    fi
    attempt=$((attempt + 1))
    sleep 1
done
for bucket in $BUCKETS; do
    mc mb --ignore-existing "checkout/$bucket"
done

# A user named after its policy, deploy/minio/<name>.json.
user() {
    mc admin policy create checkout "$1" "$policies/$1.json"
    mc admin user add checkout "$1" "$(cat "$2")" >/dev/null
    # (mc passes over a policy attached already.)
    mc admin policy attach checkout "$1" --user "$1" >/dev/null
    echo "MinIO user $1: policy $1"
}
user checkout-server "$SERVER_SECRET_KEY_FILE"
user checkout-runner "$RUNNER_SECRET_KEY_FILE"
