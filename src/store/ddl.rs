//! Creating and migrating the database's tables.
//!
//! The schema the database was last opened with is stored in `_ferry_meta`, so a
//! new app version can be compared with it and migrated in one transaction. A
//! refused migration rolls back completely: the database stays as it was.

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::records::quote;
use super::{meta_get, meta_set, outbox};
use crate::error::{Error, Result};
use crate::schema::{Collection, Index, Migration, Schema, plan_migration};

const META_DDL: &str =
    "CREATE TABLE IF NOT EXISTS _ferry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);";

/// Brings the database to `wanted` (or loads the stored schema when `None`), and
/// returns the schema in force and the installation's client id.
///
/// With `installation` (the host's id of this app install, which a backup does
/// not carry), a database last opened by another installation is a restored or
/// cloned copy: it gets a new client id, so that the server does not take the
/// first device's writes for this one's echoes and drop them from its pulls.
pub(crate) fn prepare(
    conn: &mut Connection,
    wanted: Option<Schema>,
    installation: Option<&str>,
) -> Result<(Schema, String)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(META_DDL)?;
    let layout = super::layout::stored(&tx)?;
    tx.execute_batch(outbox::DDL)?;
    tx.execute_batch(super::shadow::DDL)?;
    super::layout::upgrade(&tx, layout)?;
    let stored = match meta_get(&tx, "schema")? {
        Some(json) => Some(Schema::from_json(&json)?),
        None => None,
    };
    let schema = match (stored, wanted) {
        (None, None) => {
            return Err(Error::InvalidSchema(
                "this database has no schema yet; open it with one (ferry init --schema FILE)"
                    .into(),
            ));
        }
        (Some(old), None) => old,
        (None, Some(new)) => {
            for c in &new.collections {
                create_collection(&tx, c)?;
            }
            new
        }
        (Some(old), Some(new)) => {
            for step in plan_migration(&old, &new)? {
                run_step(&tx, &step)?;
            }
            new
        }
    };
    meta_set(&tx, "schema", &schema.to_json())?;
    super::anchors::create(&tx)?;
    tx.execute_batch(super::subscriptions::DDL)?;
    super::staging::prepare(&tx, &schema)?;
    let client_id = match meta_get(&tx, "client_id")? {
        Some(id) => id,
        None => {
            let id = uuid::Uuid::now_v7().to_string();
            meta_set(&tx, "client_id", &id)?;
            id
        }
    };
    let client_id = match installation {
        None => client_id,
        Some(now) => {
            let was = meta_get(&tx, "installation_id")?;
            meta_set(&tx, "installation_id", now)?;
            match was {
                // Made here, or from before installation ids were passed.
                None => client_id,
                Some(was) if was == now => client_id,
                Some(_) => {
                    let id = uuid::Uuid::now_v7().to_string();
                    tracing::warn!(
                        old = %client_id,
                        new = %id,
                        "the database was opened by another installation before (restored from a backup or cloned): new client id"
                    );
                    meta_set(&tx, "client_id", &id)?;
                    id
                }
            }
        }
    };
    crate::crash::point("migrate");
    tx.commit()?;
    Ok((schema, client_id))
}

fn create_collection(tx: &Transaction<'_>, c: &Collection) -> Result<()> {
    create_table(tx, c, &c.name)?;
    create_indexes(tx, c)
}

/// Creates `table` shaped like collection `c` (its typed columns and the
/// bookkeeping columns), without indexes: a first sync fills it in key order,
/// and [`create_indexes`] follows once it is the collection.
pub(super) fn create_table(tx: &Transaction<'_>, c: &Collection, table: &str) -> Result<()> {
    let mut sql = format!(
        "CREATE TABLE {} (id TEXT PRIMARY KEY NOT NULL",
        quote(table)
    );
    for col in &c.columns {
        sql.push_str(&format!(", {} {}", quote(&col.name), col.ty.sql_type()));
    }
    sql.push_str(
        ", _status TEXT NOT NULL, _changed TEXT, _version INTEGER, \
         _created_at INTEGER NOT NULL, _updated_at INTEGER NOT NULL) WITHOUT ROWID;",
    );
    tx.execute_batch(&sql)?;
    Ok(())
}

/// Creates collection `c`'s indexes on its table: the partial index on pending
/// rows, and the schema's indexes.
pub(super) fn create_indexes(tx: &Transaction<'_>, c: &Collection) -> Result<()> {
    tx.execute_batch(&format!(
        "CREATE INDEX {} ON {}(_status) WHERE _status <> 'synced';",
        quote(&format!("_ferry_{}_pending", c.name)),
        quote(&c.name)
    ))?;
    for idx in &c.indexes {
        create_index(tx, &c.name, &idx.sql_name(&c.name), idx)?;
    }
    Ok(())
}

fn create_index(tx: &Transaction<'_>, table: &str, name: &str, idx: &Index) -> Result<()> {
    let cols: Vec<String> = idx.columns.iter().map(|c| quote(c)).collect();
    tx.execute_batch(&format!(
        "CREATE {}INDEX {} ON {}({});",
        if idx.unique { "UNIQUE " } else { "" },
        quote(name),
        quote(table),
        cols.join(", ")
    ))?;
    Ok(())
}

fn count(tx: &Transaction<'_>, sql: &str) -> Result<i64> {
    Ok(tx.query_row(sql, [], |r| r.get(0))?)
}

fn run_step(tx: &Transaction<'_>, step: &Migration) -> Result<()> {
    match step {
        Migration::CreateCollection(c) => create_collection(tx, c),
        Migration::AddColumn { collection, column } => {
            let mut sql = format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                quote(collection),
                quote(&column.name),
                column.ty.sql_type()
            );
            if let Some(d) = &column.default {
                // Defaults are checked values; bind-free DDL needs a literal.
                let lit = match super::records::ToSql::to_sql(d, column.ty) {
                    rusqlite::types::Value::Null => "NULL".to_string(),
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Real(f) => format!("{f:?}"),
                    rusqlite::types::Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
                    rusqlite::types::Value::Blob(_) => "NULL".to_string(),
                };
                sql.push_str(&format!(" DEFAULT {lit}"));
            }
            tx.execute_batch(&sql)?;
            Ok(())
        }
        Migration::DropColumn { collection, column } => {
            let in_use = count(
                tx,
                &format!(
                    "SELECT COUNT(*) FROM {} WHERE {} IS NOT NULL",
                    quote(collection),
                    quote(column)
                ),
            )?;
            if in_use > 0 {
                return Err(Error::IncompatibleSchema(format!(
                    "column `{collection}.{column}` was removed but {in_use} records still hold a value in it"
                )));
            }
            tx.execute_batch(&format!(
                "ALTER TABLE {} DROP COLUMN {}",
                quote(collection),
                quote(column)
            ))?;
            Ok(())
        }
        Migration::DropCollection(name) => {
            let n = count(tx, &format!("SELECT COUNT(*) FROM {}", quote(name)))?;
            if n > 0 {
                return Err(Error::IncompatibleSchema(format!(
                    "collection `{name}` was removed but still holds {n} records"
                )));
            }
            tx.execute_batch(&format!("DROP TABLE {}", quote(name)))?;
            Ok(())
        }
        Migration::RequireNoNulls { collection, column } => {
            let n = count(
                tx,
                &format!(
                    "SELECT COUNT(*) FROM {} WHERE {} IS NULL",
                    quote(collection),
                    quote(column)
                ),
            )?;
            if n > 0 {
                return Err(Error::IncompatibleSchema(format!(
                    "`{collection}.{column}` became non-nullable but {n} records hold null"
                )));
            }
            Ok(())
        }
        Migration::CreateIndex { collection, index } => {
            create_index(tx, collection, &index.sql_name(collection), index)
        }
        Migration::DropIndex { collection, index } => {
            // A collection swapped in by a first sync of Ferry before staging format 3
            // has its indexes under a `#…` suffix.
            let name = index.sql_name(collection);
            let found: Vec<String> = tx
                .prepare(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1
                     AND (name = ?2 OR substr(name, 1, length(?2) + 1) = ?2 || '#')",
                )?
                .query_map([collection, &name], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for n in found {
                tx.execute_batch(&format!("DROP INDEX {}", quote(&n)))?;
            }
            Ok(())
        }
    }
}
