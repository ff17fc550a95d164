//! Access tokens: JWTs signed with the keyring's current Ed25519 key (`EdDSA`, with `kid`),
//! carrying the principal. Verification checks the signature with the named key, the
//! expiry and the issuer; verified tokens are remembered until they expire, so a client
//! that sends the same token on every request pays for the signature check once.
//!
//! Revocation is checked with the signature, cached or not: a token revoked by itself
//! (logout, `jti`), or every token of a principal issued up to a moment (a disabled client),
//! is refused from then on. The list is short (a revoked token is forgotten when it would
//! have expired anyway) and kept in the store by [`crate::Access`], so every API node
//! learns it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::Keyring;
use crate::principal::Principal;

/// Why a token was refused (always 401).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token is malformed")]
    Malformed,
    #[error("the access token is signed with an unknown key")]
    UnknownKey,
    #[error("the access token's signature is not valid")]
    BadSignature,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token was not issued by this platform")]
    WrongIssuer,
    #[error("the access token has been revoked (signed out, or its client disabled)")]
    Revoked,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    iat: i64,
    exp: i64,
    jti: String,
    scope: String,
    /// The principal, whole.
    hutong: Principal,
}

/// Issues and verifies tokens.
pub struct Tokens {
    keys: Arc<std::sync::RwLock<Keyring>>,
    issuer: String,
    /// Lifetime of a token in seconds.
    pub lifetime: i64,
    verified: Mutex<HashMap<String, Verified>>,
    revoked: std::sync::RwLock<Revoked>,
}

/// A token whose signature was checked.
#[derive(Clone)]
struct Verified {
    principal: Arc<Principal>,
    exp: i64,
    iat: i64,
    jti: String,
}

/// What has been revoked.
#[derive(Debug, Default)]
struct Revoked {
    /// Token ids → when the token expires (s), after which the entry can go.
    tokens: HashMap<String, i64>,
    /// [`principal_key`] → tokens issued at or before this moment (s) are dead.
    principals: HashMap<String, i64>,
}

/// The key a principal's revocation is kept under: its kind and subject (a client's id, a
/// user's name), which every token issued to it carries.
pub fn principal_key(kind: crate::principal::Kind, subject: &str) -> String {
    format!("{}:{subject}", kind.as_str())
}

const CACHE_MAX: usize = 50_000;

impl Tokens {
    pub fn new(keys: Arc<std::sync::RwLock<Keyring>>, issuer: &str) -> Tokens {
        Tokens {
            keys,
            issuer: issuer.to_string(),
            lifetime: 3600,
            verified: Mutex::new(HashMap::new()),
            revoked: Default::default(),
        }
    }

    /// Revokes one token (it must be valid): its id and expiry, for the store.
    pub fn revoke(&self, token: &str) -> Result<(String, i64), TokenError> {
        let v = self.verified(token)?;
        self.revoke_id(&v.jti, v.exp);
        Ok((v.jti, v.exp))
    }

    /// Revokes the token with id `jti` (expiring at `exp`, s).
    pub fn revoke_id(&self, jti: &str, exp: i64) {
        let now = hutong_fhir::date::now_ms() / 1000;
        let mut r = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        r.tokens.retain(|_, e| *e > now);
        r.tokens.insert(jti.to_string(), exp);
    }

    /// Revokes every token of the principal `key` ([`principal_key`]) issued at or before
    /// `at` (s).
    pub fn revoke_principal(&self, key: &str, at: i64) {
        let mut r = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        let e = r.principals.entry(key.to_string()).or_insert(at);
        *e = (*e).max(at);
    }

    fn is_revoked(&self, v: &Verified) -> bool {
        let r = self.revoked.read().unwrap_or_else(|e| e.into_inner());
        if r.tokens.is_empty() && r.principals.is_empty() {
            return false;
        }
        r.tokens.contains_key(&v.jti)
            || r.principals
                .get(&principal_key(v.principal.kind, &v.principal.subject))
                .is_some_and(|at| v.iat <= *at)
    }

    /// A signed token for `p`, and its lifetime in seconds.
    pub fn issue(&self, p: &Principal) -> (String, i64) {
        (self.issue_for(p, self.lifetime), self.lifetime)
    }

    /// A signed token for `p` valid `lifetime` seconds (the demo's long-lived token,
    /// benchmarks, tests).
    pub fn issue_for(&self, p: &Principal, lifetime: i64) -> String {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let k = keys.signing();
        let now = hutong_fhir::date::now_ms() / 1000;
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: p.subject.clone(),
            iat: now,
            exp: now + lifetime,
            jti: uuid::Uuid::new_v4().to_string(),
            scope: p.scopes.to_string(),
            hutong: p.clone(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(k.kid.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&k.pkcs8))
            .expect("an Ed25519 key signs")
    }

    /// The principal of a valid token.
    pub fn verify(&self, token: &str) -> Result<Arc<Principal>, TokenError> {
        let v = self.verified(token)?;
        if self.is_revoked(&v) {
            return Err(TokenError::Revoked);
        }
        Ok(v.principal)
    }

    /// A token whose signature, issuer and expiry hold (revoked or not).
    fn verified(&self, token: &str) -> Result<Verified, TokenError> {
        let now = hutong_fhir::date::now_ms() / 1000;
        if let Some(v) = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
        {
            if v.exp > now {
                return Ok(v.clone());
            }
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::BadSignature);
        }
        let kid = header.kid.ok_or(TokenError::Malformed)?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let key = keys.signing_key(&kid).ok_or(TokenError::UnknownKey)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[&self.issuer]);
        v.leeway = 5;
        let data =
            jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_ed_der(key.public()), &v)
                .map_err(|e| match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                    jsonwebtoken::errors::ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                    _ => TokenError::Malformed,
                })?;
        let v = Verified {
            principal: Arc::new(data.claims.hutong),
            exp: data.claims.exp,
            iat: data.claims.iat,
            jti: data.claims.jti,
        };
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, c| c.exp > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), v.clone());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(
            Arc::new(std::sync::RwLock::new(Keyring::generate().unwrap())),
            "https://hutong.test",
        )
    }

    #[test]
    fn issued_tokens_verify_and_forgeries_do_not() {
        let t = tokens();
        let p = Principal::platform("test");
        let (tok, _) = t.issue(&p);
        assert_eq!(*t.verify(&tok).unwrap(), p);
        assert_eq!(*t.verify(&tok).unwrap(), p, "from the cache");
        // Another platform's key, same kid shape: refused.
        let other = tokens();
        let (foreign, _) = other.issue(&p);
        assert!(matches!(
            t.verify(&foreign),
            Err(TokenError::UnknownKey | TokenError::BadSignature)
        ));
        // A tampered payload.
        let parts: Vec<&str> = tok.split('.').collect();
        let forged = format!("{}.{}x.{}", parts[0], parts[1], parts[2]);
        assert!(t.verify(&forged).is_err());
        assert_eq!(t.verify("nonsense"), Err(TokenError::Malformed));
        // An unsigned token ("alg": "none") is never accepted.
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert!(t.verify(&none).is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let mut t = tokens();
        t.lifetime = -100;
        let (tok, _) = t.issue(&Principal::platform("test"));
        assert_eq!(t.verify(&tok), Err(TokenError::Expired));
    }

    #[test]
    fn revoked_tokens_are_refused_cached_or_not() {
        let t = tokens();
        let p = Principal::platform("svc");
        let (a, _) = t.issue(&p);
        let (b, _) = t.issue(&p);
        assert!(t.verify(&a).is_ok(), "cached now");
        t.revoke(&a).unwrap();
        assert_eq!(t.verify(&a), Err(TokenError::Revoked));
        assert!(t.verify(&b).is_ok(), "only that token");
        // Every token of the principal issued up to now.
        let now = hutong_fhir::date::now_ms() / 1000;
        t.revoke_principal(&principal_key(p.kind, &p.subject), now);
        assert_eq!(t.verify(&b), Err(TokenError::Revoked));
        let other = Principal::platform("other");
        assert!(t.verify(&t.issue(&other).0).is_ok(), "another principal");
        assert!(
            t.revoke("nonsense").is_err(),
            "only valid tokens are revoked"
        );
    }

    #[test]
    fn rotated_keys_still_verify_old_tokens() {
        let t = tokens();
        let (old, _) = t.issue(&Principal::platform("a"));
        t.keys.write().unwrap().rotate_signing().unwrap();
        let (new, _) = t.issue(&Principal::platform("b"));
        t.verified.lock().unwrap().clear();
        assert!(t.verify(&old).is_ok());
        assert!(t.verify(&new).is_ok());
    }
}
