//! Access tokens: JWTs signed with the keyring's current Ed25519 key (`EdDSA`, with `kid`),
//! carrying the principal. Verification checks the signature with the named key, the
//! expiry and the issuer; verified tokens are remembered until they expire, so a client
//! that sends the same token on every request pays for the signature check once.

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
    verified: Mutex<HashMap<String, (Arc<Principal>, i64)>>,
}

const CACHE_MAX: usize = 50_000;

impl Tokens {
    pub fn new(keys: Arc<std::sync::RwLock<Keyring>>, issuer: &str) -> Tokens {
        Tokens {
            keys,
            issuer: issuer.to_string(),
            lifetime: 3600,
            verified: Mutex::new(HashMap::new()),
        }
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
        let now = hutong_fhir::date::now_ms() / 1000;
        if let Some((p, exp)) = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
        {
            if *exp > now {
                return Ok(p.clone());
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
        let p = Arc::new(data.claims.hutong);
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, exp)| *exp > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), (p.clone(), data.claims.exp));
        Ok(p)
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
