//! API keys: when configured, every /api call carries `Authorization: Bearer <key>`, and a key
//! sees only the requests it created. Requests record a digest of their key, never the key.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::domain::Owner;
use crate::error::ApiError;

pub struct ApiKeys {
    /// SHA-256 of each key: all the same length, so comparing them reveals no key's length.
    keys: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        let keys = keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect();
        Self { keys }
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// Compares against every key in constant time, so timing reveals neither which key nor
    /// how much of one matched.
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented).into();
        let mut found = subtle::Choice::from(0);
        for k in &self.keys {
            found |= k.ct_eq(&presented);
        }
        found.into()
    }
}

/// Who is calling: the owner of the requests they create and may see.
impl FromRequestParts<AppState> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.keys.is_open() {
            return Ok(Owner::open());
        }
        if parts.headers.get(AUTHORIZATION).is_none() {
            return Err(ApiError::Unauthorized(
                "missing API key: send Authorization: Bearer <key>".into(),
            ));
        }
        let token = bearer_token(&parts.headers)
            .ok_or_else(|| ApiError::Unauthorized("Authorization must be Bearer <key>".into()))?;
        if !state.keys.matches(token.as_bytes()) {
            return Err(ApiError::Unauthorized("invalid API key".into()));
        }
        Ok(Owner::of_key(token))
    }
}

/// The token of `Authorization: Bearer <token>`, if the request has one.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let header = headers.get(AUTHORIZATION)?.to_str().ok()?;
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly() {
        let keys = ApiKeys::new(&["alpha".into(), " beta ".into(), "".into()]);
        assert!(!keys.is_open());
        assert!(keys.matches(b"alpha"));
        assert!(keys.matches(b"beta"));
        assert!(!keys.matches(b"alph"));
        assert!(!keys.matches(b"alphaa"));
        assert!(!keys.matches(b""));
        assert!(ApiKeys::new(&[]).is_open());
        assert_ne!(Owner::of_key("alpha"), Owner::of_key("beta"));
    }
}
