#!/bin/sh
# One-shot job of the Compose stack (service secrets-init), run as root before anything else: copies each
# file deploy/generate_secrets.py wrote into the volume of the containers that need it, owned by the user
# that container runs as and readable by it alone (PostgreSQL refuses a key others could read). Every run
# copies afresh, so regenerated secrets reach the containers on the next `docker compose up`.
set -eu
S="${SECRETS_DIR:-/secrets}"
OUT="${OUT_DIR:-/out}"
FLYWHEEL=10001  # deploy/Dockerfile
KAFKA=1000      # appuser in apache/kafka
POSTGRES=999    # postgres in postgres:16
if [ ! -f "$S/ca.crt" ]; then
    echo "secrets-init: $S is empty: run deploy/generate_secrets.py first (see deploy/README.md)" >&2
    exit 1
fi

put() {  # put SOURCE OWNER MODE DEST
    install -D -o "$2" -g "$2" -m "$3" "$S/$1" "$4"
}

put ca.crt 0 0444 "$OUT/certs/ca.crt"
for service in ingestion training registry serving monitoring; do
    put "grpc/$service.crt" "$FLYWHEEL" 0444 "$OUT/certs/$service/server.crt"
    put "grpc/$service.key" "$FLYWHEEL" 0400 "$OUT/certs/$service/server.key"
done

put postgres/server.crt "$POSTGRES" 0444 "$OUT/postgres/server.crt"
put postgres/server.key "$POSTGRES" 0400 "$OUT/postgres/server.key"

for file in kafka.keystore.p12 kafka.truststore.p12 keystore_creds key_creds truststore_creds \
    admin.keystore.p12 admin.properties; do
    put "kafka/$file" "$KAFKA" 0400 "$OUT/kafka/$file"
done
echo "secrets-init: certificates and keys are in place"
