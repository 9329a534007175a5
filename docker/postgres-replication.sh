#!/bin/sh
# Run once by the postgres image's entrypoint when it creates the primary's database
# (docker-entrypoint-initdb.d): lets a streaming standby (docker-compose.yml's `standby`
# profile) connect for replication with the password of POSTGRES_USER. The image's own
# `host all all all scram-sha-256` line does not cover replication connections.
set -e
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
