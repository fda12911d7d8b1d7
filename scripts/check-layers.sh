#!/usr/bin/env bash
# Checks two layer rules of docs/architecture.md ("Layers"):
#
#   - the store owns every table and its SQL, and never looks up at the sync
#     engine: no file under src/store names `crate::sync` (or `super::super::sync`,
#     or `sync` in a `use crate::{..}` list);
#   - the sync engine holds no SQL: no file under src/sync has a string literal
#     with an SQL keyword (SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER,
#     PRAGMA, as whole upper-case words), a line of a multi-line string starting
#     with one, or a `_ferry_` table name anywhere (comments included).
#
# The string check reads line by line: a keyword counts when a `"` opens before
# it on the same line (it may flag a keyword in a comment after a string; reword
# the comment). Exits 1 and prints the offending lines if a rule is broken.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sql='SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA'
failed=0

if grep -rnE --include='*.rs' '\b(crate|super::super)::(\{[^}]*\b)?sync\b' src/store; then
  echo "FAILED: src/store depends on the sync engine (above); the store must not import crate::sync" >&2
  failed=1
fi

if grep -rnE --include='*.rs' "\"[^\"]*\\b($sql)\\b|^[[:space:]]*($sql)\\b|_ferry_" src/sync; then
  echo "FAILED: src/sync holds SQL or a table name (above); SQL belongs to the store (src/store)" >&2
  failed=1
fi

if [ "$failed" -eq 0 ]; then
  echo "layers: src/store does not import crate::sync; src/sync holds no SQL"
fi
exit "$failed"
