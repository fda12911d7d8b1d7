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
            // `exp` is required and checked by default; `nbf`, when present, is
            // checked too (off by default in jsonwebtoken). Both with its 60 s leeway.
            let mut v = Validation::new(Algorithm::HS256);
            v.validate_nbf = true;
            if let Some(iss) = &j.issuer {
                // `set_issuer` alone checks `iss` only when the token has one: a
                // configured issuer makes the claim required.
                v.set_issuer(&[iss]);
                v.set_required_spec_claims(&["exp", "iss"]);
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
            let Claims { sub, scopes } = data.claims;
            // Owner scopes are not granted by claim: a token naming another
            // user's `user:` scope would read and write that user's private
            // records. A token that tries is refused whole, not trimmed.
            let own = owner_scope(&sub);
            if scopes
                .iter()
                .any(|s| s.starts_with(OWNER_SCOPE_PREFIX) && *s != own)
            {
                tracing::warn!("a token names another user's owner scope: refused");
                return Err(ApiError::unauthorized("invalid or expired token"));
            }
            return Ok(Caller::new(&sub, scopes));
        }
        Err(ApiError::unauthorized("invalid or expired token"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    use super::*;
    use crate::config::JwtConfig;

    const SECRET: &str = "test-secret-of-32-bytes-at-least!";
    const ISSUER: &str = "https://auth.example.com";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn authenticator(issuer: Option<&str>) -> Authenticator {
        let mut config = ServerConfig::dev();
        config.jwt = Some(JwtConfig {
            hs256_secret: SECRET.into(),
            issuer: issuer.map(str::to_string),
        });
        Authenticator::new(&config)
    }

    fn token(claims: Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap()
    }

    fn check(auth: &Authenticator, claims: Value) -> Result<Caller, ApiError> {
        auth.authenticate(Some(&format!("Bearer {}", token(claims))))
    }

    #[test]
    fn a_configured_issuer_is_required_and_must_match() {
        let auth = authenticator(Some(ISSUER));
        let exp = now() + 3600;
        let ok = check(&auth, json!({"sub": "dave", "exp": exp, "iss": ISSUER})).unwrap();
        assert_eq!(ok.user_id, "dave");
        let missing = check(&auth, json!({"sub": "dave", "exp": exp})).unwrap_err();
        assert_eq!(missing.code, "unauthorized");
        let wrong = check(
            &auth,
            json!({"sub": "dave", "exp": exp, "iss": "https://evil"}),
        );
        assert_eq!(wrong.unwrap_err().code, "unauthorized");
    }

    #[test]
    fn without_a_configured_issuer_iss_is_optional() {
        let auth = authenticator(None);
        let exp = now() + 3600;
        assert!(check(&auth, json!({"sub": "dave", "exp": exp})).is_ok());
        assert!(check(&auth, json!({"sub": "dave", "exp": exp, "iss": "anyone"})).is_ok());
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let auth = authenticator(Some(ISSUER));
        let (now, exp) = (now(), now() + 7200);
        let early = check(
            &auth,
            json!({"sub": "dave", "exp": exp, "iss": ISSUER, "nbf": now + 3600}),
        );
        assert_eq!(early.unwrap_err().code, "unauthorized");
        let started = json!({"sub": "dave", "exp": exp, "iss": ISSUER, "nbf": now - 10});
        assert!(check(&auth, started).is_ok());
    }

    #[test]
    fn a_token_may_not_claim_another_users_owner_scope() {
        let auth = authenticator(None);
        let exp = now() + 3600;
        let grab = json!({"sub": "mallory", "exp": exp, "scopes": ["team", "user:alice"]});
        assert_eq!(check(&auth, grab).unwrap_err().code, "unauthorized");
        let own = json!({"sub": "mallory", "exp": exp, "scopes": ["team", "user:mallory"]});
        let ok = check(&auth, own).unwrap();
        assert!(ok.can_access("team") && !ok.can_access("user:alice"));
    }

    #[test]
    fn an_expired_token_or_one_without_exp_is_refused() {
        let auth = authenticator(None);
        let past = check(&auth, json!({"sub": "dave", "exp": now() - 3600}));
        assert_eq!(past.unwrap_err().code, "unauthorized");
        assert!(check(&auth, json!({"sub": "dave"})).is_err());
    }
}
