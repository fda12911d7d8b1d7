//! Server configuration: collections (fields, scope field, sync rules), users and
//! their tokens, and limits.
//!
//! It exists so that everything a deployment decides is in one JSON file (see
//! `server-config.example.json`) and is checked once at startup. It must never be
//! consulted for secrets in logs: `Debug` of a [`UserConfig`] hides the token.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ServerError;

/// The whole configuration file.
#[derive(Clone, Serialize, Deserialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Synced collections by name.
    pub collections: BTreeMap<String, CollectionConfig>,
    /// Users allowed to sync, each with a bearer token.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Optional HS256 JWT verification for bearer tokens that are not in `users`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    #[serde(default)]
    pub limits: Limits,
}

/// One collection: its fields, where its scope comes from, and what is synced.
#[derive(Clone, Serialize, Deserialize, PartialEq, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    pub fields: BTreeMap<String, FieldConfig>,
    /// Field whose (string) value is the record's scope. When unset, or when the
    /// record's value is null, the scope is the owner scope `user:<user id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_field: Option<String>,
    /// Rows matching any rule are not synced (they are evicted from clients).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_rules: Vec<SyncRule>,
}

#[derive(Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Number,
    Integer,
    Boolean,
    Json,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    #[serde(rename = "type")]
    pub ty: FieldType,
    #[serde(default)]
    pub nullable: bool,
    /// For strings: maximum length in bytes. For json: maximum serialized bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
}

impl FieldConfig {
    fn new(ty: FieldType, nullable: bool) -> Self {
        FieldConfig {
            ty,
            nullable,
            max_length: None,
        }
    }
}

/// A per-collection sync rule.
#[derive(Clone, Serialize, Deserialize, PartialEq, Debug)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SyncRule {
    /// Rows whose `field` equals `equals` are not synced.
    ExcludeWhen {
        field: String,
        equals: serde_json::Value,
    },
}

impl SyncRule {
    pub fn excludes(&self, fields: &ferry_protocol::Fields) -> bool {
        match self {
            SyncRule::ExcludeWhen { field, equals } => fields.get(field) == Some(equals),
        }
    }
}

/// A user and the token that authenticates them.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub id: String,
    pub token: String,
    /// Shared scopes this user may read and write, besides its owner scope.
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// HS256 JWT: `sub` is the user id, the optional `scopes` claim lists shared scopes.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub hs256_secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted request body; larger → 413 `payload_too_large`.
    pub max_body_bytes: usize,
    /// Largest page a pull returns; larger `limit`s are clamped to it.
    pub max_page_rows: u32,
    /// Page size when the pull names no `limit`.
    pub default_page_rows: u32,
    /// Most mutations accepted in one push.
    pub max_push_mutations: usize,
    /// Request timeout in milliseconds (408 after it), counted from when the
    /// request head has arrived.
    pub request_timeout_ms: u64,
    /// Longest wait, in milliseconds, for a request head (the request line and
    /// headers) to arrive complete; the connection is closed after it. Counted from
    /// when a connection opens, or when an idle keep-alive connection got its last
    /// answer.
    pub header_read_timeout_ms: u64,
    /// Most connections open at once. Past it, new connections wait to be
    /// accepted until one closes.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 * 1024 * 1024,
            max_page_rows: ferry_protocol::DEFAULT_MAX_PAGE_ROWS,
            default_page_rows: ferry_protocol::DEFAULT_PAGE_ROWS,
            max_push_mutations: ferry_protocol::DEFAULT_MAX_PUSH_MUTATIONS,
            request_timeout_ms: 30_000,
            header_read_timeout_ms: 10_000,
            max_connections: 512,
        }
    }
}

/// Dev tokens of [`ServerConfig::dev`]. Printed at startup; never use them in production.
pub const DEV_TOKENS: [(&str, &str); 2] = [("alice", "alice-dev-token"), ("bob", "bob-dev-token")];

impl ServerConfig {
    /// The built-in development config: collections `tasks` and `projects`, users
    /// `alice` (token `alice-dev-token`) and `bob` (token `bob-dev-token`), both
    /// members of the shared scope `team`. Kept stable: the client demo and tests use it.
    pub fn dev() -> ServerConfig {
        use FieldType::*;
        let tasks = CollectionConfig {
            fields: BTreeMap::from([
                ("title".into(), FieldConfig::new(String, false)),
                ("done".into(), FieldConfig::new(Boolean, false)),
                ("priority".into(), FieldConfig::new(Integer, true)),
                ("notes".into(), FieldConfig::new(String, true)),
                ("archived".into(), FieldConfig::new(Boolean, true)),
                ("project".into(), FieldConfig::new(String, true)),
            ]),
            scope_field: None,
            sync_rules: vec![SyncRule::ExcludeWhen {
                field: "archived".into(),
                equals: serde_json::Value::Bool(true),
            }],
        };
        let projects = CollectionConfig {
            fields: BTreeMap::from([("name".into(), FieldConfig::new(String, false))]),
            scope_field: None,
            sync_rules: vec![],
        };
        ServerConfig {
            collections: BTreeMap::from([("tasks".into(), tasks), ("projects".into(), projects)]),
            users: DEV_TOKENS
                .iter()
                .map(|(id, token)| UserConfig {
                    id: (*id).into(),
                    token: (*token).into(),
                    scopes: vec!["team".into()],
                })
                .collect(),
            jwt: None,
            limits: Limits::default(),
        }
    }

    /// Reads and validates a JSON config file.
    pub fn load(path: &Path) -> Result<ServerConfig, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", path.display())))?;
        let config: ServerConfig = serde_json::from_str(&text)
            .map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks cross-references: scope fields and rule fields exist, tokens are unique
    /// and non-empty, limits are positive.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: String| Err(ServerError::Config(m));
        for (name, c) in &self.collections {
            if name.is_empty() || name.len() > 64 {
                return bad(format!("collection name {name:?} must be 1..=64 bytes"));
            }
            for field in c.fields.keys() {
                if field == "id" || field.starts_with('_') {
                    return bad(format!(
                        "{name}.{field}: `id` and `_`-prefixed names are reserved"
                    ));
                }
            }
            if let Some(sf) = &c.scope_field {
                match c.fields.get(sf) {
                    Some(f) if f.ty == FieldType::String => {}
                    _ => return bad(format!("{name}: scope_field {sf:?} must be a string field")),
                }
            }
            for SyncRule::ExcludeWhen { field, .. } in &c.sync_rules {
                if !c.fields.contains_key(field) {
                    return bad(format!("{name}: sync rule names unknown field {field:?}"));
                }
            }
        }
        let mut tokens = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for u in &self.users {
            if u.token.is_empty() || !tokens.insert(u.token.as_str()) {
                return bad(format!("user {}: token must be non-empty and unique", u.id));
            }
            if u.id.is_empty() || !ids.insert(u.id.as_str()) {
                return bad(format!("user id {:?} must be non-empty and unique", u.id));
            }
            let own = crate::auth::owner_scope(&u.id);
            if let Some(s) = u
                .scopes
                .iter()
                .find(|s| s.starts_with(crate::auth::OWNER_SCOPE_PREFIX) && **s != own)
            {
                return bad(format!(
                    "user {}: scope {s:?} is another user's owner scope",
                    u.id
                ));
            }
        }
        let l = &self.limits;
        if l.max_body_bytes == 0
            || l.max_page_rows == 0
            || l.default_page_rows == 0
            || l.request_timeout_ms == 0
            || l.header_read_timeout_ms == 0
            || l.max_connections == 0
        {
            return bad("limits must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_and_the_dev_config_are_valid() {
        let example: ServerConfig =
            serde_json::from_str(include_str!("../../server-config.example.json")).unwrap();
        example.validate().unwrap();
        assert_eq!(
            example.collections["projects"].scope_field.as_deref(),
            Some("team")
        );
        ServerConfig::dev().validate().unwrap();
    }

    #[test]
    fn a_scope_field_that_is_not_a_string_field_is_refused() {
        let mut c = ServerConfig::dev();
        c.collections.get_mut("tasks").unwrap().scope_field = Some("done".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_user_cannot_be_given_another_users_owner_scope() {
        let mut c = ServerConfig::dev();
        let victim = format!("user:{}", c.users[0].id);
        c.users[1].scopes.push(victim);
        assert!(c.validate().is_err());
    }

    #[test]
    fn connection_limits_must_be_positive() {
        for zero in [
            |l: &mut Limits| l.header_read_timeout_ms = 0,
            |l: &mut Limits| l.max_connections = 0,
        ] {
            let mut c = ServerConfig::dev();
            zero(&mut c.limits);
            assert!(c.validate().is_err());
        }
    }

    #[test]
    fn debug_output_never_shows_tokens() {
        let shown = format!("{:?}", ServerConfig::dev());
        assert!(!shown.contains("alice-dev-token"), "{shown}");
    }
}
