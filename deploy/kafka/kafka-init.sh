#!/bin/bash
# One-shot job of the Compose stack (service kafka-init): creates the SCRAM-SHA-512 users and the ACLs in
# acls.txt, as the super user kafka-admin over the broker's mTLS admin listener. Every principal named in
# acls.txt is a SCRAM user whose password is SCRAM_PASSWORD_<NAME> (upper case, - as _) in
# deploy/secrets/env/kafka-users.env. Safe to run again: passwords are set to the current ones, ACLs
# are added once.
set -euo pipefail
BIN="${KAFKA_BIN:-/opt/kafka/bin}"
ACLS="${ACLS_FILE:-/flywheel/kafka/acls.txt}"
ADMIN=(--bootstrap-server kafka:9094 --command-config /etc/kafka/secrets/admin.properties)

for user in $(grep -v -e '^#' -e '^[[:space:]]*$' "$ACLS" | awk '{print $1}' | sort -u); do
    var="SCRAM_PASSWORD_$(echo "$user" | tr 'a-z-' 'A-Z_')"
    password="${!var:?$var is not set (deploy/secrets/env/kafka-users.env)}"
    "$BIN/kafka-configs.sh" "${ADMIN[@]}" --alter --entity-type users --entity-name "$user" \
        --add-config "SCRAM-SHA-512=[iterations=8192,password=$password]" >/dev/null
    echo "kafka-init: user $user"
done

grep -v -e '^#' -e '^[[:space:]]*$' "$ACLS" | while read -r principal operations resource pattern names; do
    args=(--add --allow-principal "User:$principal" --resource-pattern-type "$pattern")
    for op in ${operations//,/ }; do args+=(--operation "$op"); done
    for name in $names; do args+=("--$resource" "$name"); done
    "$BIN/kafka-acls.sh" "${ADMIN[@]}" "${args[@]}" >/dev/null
    echo "kafka-init: $principal may $operations $resource $pattern $names"
done
