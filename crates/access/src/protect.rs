//! Encryption of identity data at rest (信息加密): bodies of Patient, Person and
//! RelatedPerson are sealed with AES-256-GCM under the keyring's current data key (its id in
//! every sealed body, so rotated keys keep older bodies readable), and their identifiers,
//! phones, e-mail addresses, names and street addresses are indexed as HMAC-SHA256 keyed
//! hashes — searchable by exact value (names and addresses by prefix), never stored in the
//! clear.

use std::sync::{Arc, RwLock};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hmac;

use crate::keys::{hex, random_bytes, Keyring};
use hutong_store::codec::{Protector, SEALED};

/// The types whose bodies carry a person's identity.
pub const SEALED_TYPES: [&str; 3] = ["Patient", "Person", "RelatedPerson"];
/// Their search parameters whose values identify a person (the street address and postcode
/// among them; city, district and province stay searchable in the clear for statistics).
pub const BLINDED_PARAMS: [&str; 10] = [
    "identifier",
    "telecom",
    "phone",
    "email",
    "name",
    "family",
    "given",
    "phonetic",
    "address",
    "address-postalcode",
];

/// The keyring as the store's protector.
pub struct KeyringProtector {
    keys: Arc<RwLock<Keyring>>,
    /// The index key, fixed for the life of the store (rotating it means re-indexing).
    index: hmac::Key,
}

impl KeyringProtector {
    pub fn new(keys: Arc<RwLock<Keyring>>) -> KeyringProtector {
        let index = hmac::Key::new(
            hmac::HMAC_SHA256,
            keys.read().unwrap_or_else(|e| e.into_inner()).index_key(),
        );
        KeyringProtector { keys, index }
    }
}

fn cipher(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES key"))
}

impl Protector for KeyringProtector {
    fn seals(&self, rtype: &str) -> bool {
        SEALED_TYPES.contains(&rtype)
    }

    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, String> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let (kid, key) = keys.data_key();
        let nonce = random_bytes::<12>();
        // Layout: magic, key id, nonce, ciphertext and tag; the header is authenticated.
        let mut out = Vec::with_capacity(4 + 4 + 12 + plain.len() + 16);
        out.extend_from_slice(SEALED);
        out.extend_from_slice(&kid.to_be_bytes());
        out.extend_from_slice(&nonce);
        let header = out.clone();
        let mut body = plain.to_vec();
        cipher(key)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&header),
                &mut body,
            )
            .map_err(|_| "encryption failed".to_string())?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < 4 + 4 + 12 + 16 || !sealed.starts_with(SEALED) {
            return Err("not a sealed body".into());
        }
        let kid = u32::from_be_bytes(sealed[4..8].try_into().expect("4 bytes"));
        let nonce: [u8; 12] = sealed[8..20].try_into().expect("12 bytes");
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let key = keys
            .data_key_by_id(kid)
            .ok_or_else(|| format!("data key {kid} is not in the keyring"))?;
        let mut body = sealed[20..].to_vec();
        let plain = cipher(key)
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&sealed[..20]),
                &mut body,
            )
            .map_err(|_| "authentication failed (wrong key or altered data)".to_string())?;
        Ok(plain.to_vec())
    }

    fn blinds(&self, rtype: &str, code: &str) -> bool {
        SEALED_TYPES.contains(&rtype) && BLINDED_PARAMS.contains(&code)
    }

    fn blind(&self, kind: &str, value: &str) -> String {
        let tag = hmac::sign(&self.index, format!("{kind}\u{0}{value}").as_bytes());
        // 128 bits are plenty to tell values apart and keep index rows small.
        hex(&tag.as_ref()[..16])
    }
}

/// Which data key sealed a body (for re-encryption after rotation).
pub fn sealed_key_id(blob: &[u8]) -> Option<u32> {
    (blob.len() >= 8 && blob.starts_with(SEALED))
        .then(|| u32::from_be_bytes(blob[4..8].try_into().expect("4 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_rotate_and_tamper() {
        let keys = Arc::new(RwLock::new(Keyring::generate().unwrap()));
        let p = KeyringProtector::new(keys.clone());
        let body = br#"{"resourceType":"Patient","identifier":[{"value":"330127196408244586"}]}"#;
        let sealed = p.seal(body).unwrap();
        assert!(!sealed.windows(18).any(|w| w == b"330127196408244586"));
        assert_eq!(p.open(&sealed).unwrap(), body);
        assert_eq!(sealed_key_id(&sealed), Some(1));
        keys.write().unwrap().rotate_data().unwrap();
        let newer = p.seal(body).unwrap();
        assert_eq!(sealed_key_id(&newer), Some(2));
        assert_eq!(p.open(&sealed).unwrap(), body, "old key still decrypts");
        let mut bad = newer.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(p.open(&bad).is_err());
        let mut wrong_kid = newer.clone();
        wrong_kid[7] = 9;
        assert!(p.open(&wrong_kid).is_err());
        assert_eq!(p.blind("token", "x"), p.blind("token", "x"));
        assert_ne!(p.blind("token", "x"), p.blind("prefix", "x"));
        assert!(p.blinds("Patient", "identifier") && !p.blinds("Observation", "identifier"));
    }
}
