//! Bearer-token authentication: maps `Authorization: Bearer <token>` to a [`Caller`]
//! (user id plus the scopes it may read and write).
//!
//! Tokens come from the config's user list or, when configured, from HS256 JWTs.
//! This module must never log or echo a token, nor say which part of a token was wrong.

use std::collections::{BTreeSet, HashMap};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::ServerConfig;
use crate::error::ApiError;

/// Prefix of every owner scope: a record without a shared scope lives in `user:<id>`.
pub const OWNER_SCOPE_PREFIX: &str = "user:";

/// The authenticated user of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    /// Every scope the user may read and write, its owner scope included.
    pub scopes: BTreeSet<String>,
}

impl Caller {
    pub fn new(user_id: &str, shared: impl IntoIterator<Item = String>) -> Caller {
        let mut scopes: BTreeSet<String> = shared.into_iter().collect();
        scopes.insert(owner_scope(user_id));
        Caller {
            user_id: user_id.to_string(),
            scopes,
        }
    }
    pub fn owner_scope(&self) -> String {
        owner_scope(&self.user_id)
    }
    pub fn can_access(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
}

pub fn owner_scope(user_id: &str) -> String {
    format!("{OWNER_SCOPE_PREFIX}{user_id}")
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scopes: Vec<String>,
}

/// Resolves tokens to callers. Built once from the config.
pub struct Authenticator {
    by_token: HashMap<String, Caller>,
    jwt: Option<(DecodingKey, Validation)>,
}

impl Authenticator {
    pub fn new(config: &ServerConfig) -> Authenticator {
        let by_token = config
            .users
            .iter()
            .map(|u| {
                (
                    u.token.clone(),
                    Caller::new(&u.id, u.scopes.iter().cloned()),
                )
            })
            .collect();
        let jwt = config.jwt.as_ref().map(|j| {
            let mut v = Validation::new(Algorithm::HS256);
            if let Some(iss) = &j.issuer {
                v.set_issuer(&[iss]);
            }
            (DecodingKey::from_secret(j.hs256_secret.as_bytes()), v)
        });
        Authenticator { by_token, jwt }
    }

    /// Authenticates the value of an `Authorization` header.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let header = header.ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("expected `Authorization: Bearer <token>`"))?;
        if let Some(caller) = self.by_token.get(token) {
            return Ok(caller.clone());
        }
        if let Some((key, validation)) = &self.jwt
            && let Ok(data) = jsonwebtoken::decode::<Claims>(token, key, validation)
            && !data.claims.sub.is_empty()
        {
            return Ok(Caller::new(&data.claims.sub, data.claims.scopes));
        }
        Err(ApiError::unauthorized("invalid or expired token"))
    }
}
