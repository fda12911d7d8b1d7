//! Schema migrations: what changes between the stored schema and the app's new one.
//!
//! Only additive changes happen silently (new collections, columns and indexes,
//! dropped indexes, relaxed nullability). Anything that could lose data — a type
//! change, dropping a column or collection that still holds data, tightening
//! nullability over existing nulls — is a typed [`Error::IncompatibleSchema`]. The
//! checks that need the data ([`Migration::data_checks`]) run inside the migration
//! transaction, so a refused migration changes nothing.

use super::{Collection, Column, Index, Schema};
use crate::error::{Error, Result};

/// One step of a migration, in execution order.
#[derive(Debug, Clone, PartialEq)]
pub enum Migration {
    CreateCollection(Collection),
    AddColumn {
        collection: String,
        column: Column,
    },
    /// Refused at run time unless every row holds NULL in the column.
    DropColumn {
        collection: String,
        column: String,
    },
    /// Refused at run time unless the table is empty.
    DropCollection(String),
    /// Refused at run time if the column holds a NULL.
    RequireNoNulls {
        collection: String,
        column: String,
    },
    CreateIndex {
        collection: String,
        index: Index,
    },
    DropIndex {
        collection: String,
        index: Index,
    },
}

fn incompatible(msg: String) -> Error {
    Error::IncompatibleSchema(msg)
}

/// Plans the steps from `old` to `new`; errors on a change that cannot be done safely.
pub fn plan_migration(old: &Schema, new: &Schema) -> Result<Vec<Migration>> {
    if new.version < old.version {
        return Err(incompatible(format!(
            "the database has schema version {} but the app declares the older version {}",
            old.version, new.version
        )));
    }
    if new.version == old.version {
        if new != old {
            return Err(incompatible(format!(
                "the schema changed but its version is still {}; bump the version",
                new.version
            )));
        }
        return Ok(vec![]);
    }
    let mut steps = Vec::new();
    for oc in &old.collections {
        if !new.collections.iter().any(|c| c.name == oc.name) {
            steps.push(Migration::DropCollection(oc.name.clone()));
        }
    }
    for nc in &new.collections {
        let Some(oc) = old.collections.iter().find(|c| c.name == nc.name) else {
            steps.push(Migration::CreateCollection(nc.clone()));
            continue;
        };
        for idx in &oc.indexes {
            if !nc.indexes.contains(idx) {
                steps.push(Migration::DropIndex {
                    collection: nc.name.clone(),
                    index: idx.clone(),
                });
            }
        }
        for ocol in &oc.columns {
            match nc.column(&ocol.name) {
                None => steps.push(Migration::DropColumn {
                    collection: nc.name.clone(),
                    column: ocol.name.clone(),
                }),
                Some(ncol) if ncol.ty != ocol.ty => {
                    return Err(incompatible(format!(
                        "`{}.{}` changes type from {} to {}",
                        nc.name,
                        ocol.name,
                        ocol.ty.as_str(),
                        ncol.ty.as_str()
                    )));
                }
                Some(ncol) if ocol.nullable && !ncol.nullable => {
                    steps.push(Migration::RequireNoNulls {
                        collection: nc.name.clone(),
                        column: ncol.name.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        for ncol in &nc.columns {
            if oc.column(&ncol.name).is_none() {
                if !ncol.nullable && ncol.default.is_none() {
                    return Err(incompatible(format!(
                        "new column `{}.{}` is not nullable and has no default for existing rows",
                        nc.name, ncol.name
                    )));
                }
                steps.push(Migration::AddColumn {
                    collection: nc.name.clone(),
                    column: ncol.clone(),
                });
            }
        }
        for idx in &nc.indexes {
            if !oc.indexes.contains(idx) {
                steps.push(Migration::CreateIndex {
                    collection: nc.name.clone(),
                    index: idx.clone(),
                });
            }
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: serde_json::Value) -> Schema {
        Schema::from_json(&v.to_string()).unwrap()
    }

    #[test]
    fn type_change_is_refused() {
        let old = s(
            json!({"version":1,"collections":[{"name":"t","columns":[{"name":"a","type":"string"}]}]}),
        );
        let new = s(
            json!({"version":2,"collections":[{"name":"t","columns":[{"name":"a","type":"integer"}]}]}),
        );
        assert!(matches!(
            plan_migration(&old, &new),
            Err(Error::IncompatibleSchema(_))
        ));
    }

    #[test]
    fn same_version_different_schema_is_refused_and_downgrade_too() {
        let old = s(json!({"version":2,"collections":[]}));
        let new = s(json!({"version":2,"collections":[{"name":"t","columns":[]}]}));
        assert!(plan_migration(&old, &new).is_err());
        let older = s(json!({"version":1,"collections":[]}));
        assert!(plan_migration(&old, &older).is_err());
    }

    #[test]
    fn additive_changes_are_planned_in_order() {
        let old = s(
            json!({"version":1,"collections":[{"name":"t","columns":[{"name":"a","type":"string"}]}]}),
        );
        let new = s(json!({"version":2,"collections":[
            {"name":"t","columns":[{"name":"a","type":"string"},{"name":"b","type":"integer","nullable":true}],
             "indexes":[{"columns":["b"]}]},
            {"name":"u","columns":[]}]}));
        let steps = plan_migration(&old, &new).unwrap();
        assert!(matches!(&steps[0], Migration::AddColumn { column, .. } if column.name == "b"));
        assert!(matches!(&steps[1], Migration::CreateIndex { .. }));
        assert!(matches!(&steps[2], Migration::CreateCollection(c) if c.name == "u"));
    }
}
