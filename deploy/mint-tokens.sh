#!/usr/bin/env bash
# Mints the Flywheel API tokens of the Compose stack: one per service identity (service-<name>, role
# service:<name>), which each service sends as FLYWHEEL_AUTH_TOKEN when it calls another, and one admin
# token for you. PostgreSQL must be up (`docker compose up -d postgres`); nobody holds a token yet, so
# this writes the token store directly: `flywheel tokens create ... --bootstrap`, run in the one-shot
# `migrate` container, whose database role (flywheel_migrator) owns the token store. It first applies
# every migration (`flywheel migrate`, idempotent), so the store exists. Only hashes are stored; the
# secrets land in deploy/secrets/tokens/<service>.env and deploy/secrets/admin-token (mode 0600). A
# service that already has a token keeps it; to rotate one, revoke it (`flywheel tokens revoke
# service-<name>`), delete its line from tokens/<name>.env, run this again and `docker compose up -d`.
set -euo pipefail
cd "$(dirname "$0")/.."
secrets=deploy/secrets
umask 077
# docker-compose.yml requires POSTGRES_PASSWORD and GRAFANA_ADMIN_PASSWORD (deploy/generate_secrets.py).
export COMPOSE_ENV_FILES="${COMPOSE_ENV_FILES:-$secrets/compose.env}"

docker compose run --rm --no-deps -T migrate >&2

mint() {  # mint NAME ROLE: prints the token's secret
    docker compose run --rm --no-deps -T migrate flywheel tokens create "$1" --role "$2" --bootstrap
}

for service in ingestion training registry serving monitoring; do
    file="$secrets/tokens/$service.env"
    if grep -q '^FLYWHEEL_AUTH_TOKEN=' "$file" 2>/dev/null; then
        echo "mint-tokens: service-$service already has a token ($file)"
        continue
    fi
    token=$(mint "service-$service" "service:$service")
    printf 'FLYWHEEL_AUTH_TOKEN=%s\n' "$token" >"$file"
    echo "mint-tokens: service-$service -> $file"
done

if [ ! -s "$secrets/admin-token" ]; then
    mint admin admin >"$secrets/admin-token"
    echo "mint-tokens: admin -> $secrets/admin-token"
fi
