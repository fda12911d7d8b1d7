#!/usr/bin/env bash
# Starts the local PostgreSQL 15 cluster and makes a role + database for the
# ferry-server tests. Idempotent. Prints the URL to export as FERRY_TEST_PG_URL.
# Tests create one database per test (the role has CREATEDB); stale ones from
# earlier runs are dropped here.
set -euo pipefail

PG_VERSION="${PG_VERSION:-15}"
ROLE="${FERRY_PG_ROLE:-ferry}"
PASSWORD="${FERRY_PG_PASSWORD:-ferry}"
DB="${FERRY_PG_DB:-ferry}"
PORT="${FERRY_PG_PORT:-5432}"

# Root and postgres run the cluster tools as themselves (root reaches postgres
# through su); anyone else goes through sudo.
as_root() {
  if [ "$(id -u)" = 0 ] || [ "$(id -un)" = postgres ]; then "$@"; else sudo "$@"; fi
}
as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"
  elif [ "$(id -u)" = 0 ]; then su postgres -c "$(printf '%q ' "$@")"
  else sudo -u postgres "$@"
  fi
}
cd /  # readable by postgres

if ! command -v pg_ctlcluster >/dev/null; then
  echo "pg-start: PostgreSQL is not installed (apt-get install postgresql-$PG_VERSION)" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ] && [ "$(id -un)" != postgres ] && ! command -v sudo >/dev/null; then
  echo "pg-start: need root, sudo or the postgres user to start PostgreSQL" >&2
  exit 1
fi
if ! pg_lsclusters -h | awk -v v="$PG_VERSION" '$1 == v && $2 == "main"' | grep -q .; then
  as_root pg_createcluster "$PG_VERSION" main >&2
fi
if ! pg_lsclusters -h | awk -v v="$PG_VERSION" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
  # Its messages (e.g. "Removed stale pid file.") go to stderr: callers
  # capture stdout, which carries only the URL printed at the end.
  as_root pg_ctlcluster "$PG_VERSION" main start >&2
fi
for _ in $(seq 1 30); do
  as_postgres psql -p "$PORT" -tAc "SELECT 1" >/dev/null 2>&1 && break
  sleep 0.5
done

as_postgres psql -p "$PORT" -v ON_ERROR_STOP=1 -q >&2 <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
  ELSE
    ALTER ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
  END IF;
END
\$\$;
SQL
if ! as_postgres psql -p "$PORT" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
  as_postgres createdb -p "$PORT" -O "$ROLE" "$DB" >&2
fi
# Drop per-test databases left by earlier runs.
for stale in $(as_postgres psql -p "$PORT" -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'ferry_t_%'"); do
  as_postgres psql -p "$PORT" -qc "DROP DATABASE IF EXISTS \"$stale\" WITH (FORCE)" >/dev/null
done

echo "postgres://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
