//! The platform's keys: Ed25519 signing keys (access tokens, audit checkpoints), AES-256
//! data keys (identity data at rest) and the index key (keyed hashes that make encrypted
//! values searchable). Every key has an id, so a key can be rotated: new tokens, checkpoints
//! and bodies use the newest, and older ones stay usable to verify and decrypt.
//!
//! The keyring is a JSON file readable only by its owner — in the data directory for the
//! embedded store, or wherever `keys_file` / `HUTONG_KEYS_FILE` points (PostgreSQL
//! deployments, where every API node reads the same file).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("keyring {path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("keyring: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SigningKeyFile {
    kid: String,
    created: i64,
    /// PKCS#8 document, base64.
    pkcs8: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DataKeyFile {
    kid: u32,
    created: i64,
    /// 32 bytes, base64.
    key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyringFile {
    /// Oldest first; the last one signs.
    signing: Vec<SigningKeyFile>,
    /// Oldest first; the last one encrypts.
    data: Vec<DataKeyFile>,
    /// The index key, base64.
    index: String,
}

/// A signing key pair.
pub struct SigningKey {
    pub kid: String,
    pub pkcs8: Vec<u8>,
    pub pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    pub fn public(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }
}

/// The loaded keyring.
#[derive(Debug)]
pub struct Keyring {
    path: Option<PathBuf>,
    file: KeyringFile,
    signing: Vec<SigningKey>,
    data: Vec<(u32, [u8; 32])>,
    index: [u8; 32],
}

fn now_ms() -> i64 {
    hutong_fhir::date::now_ms()
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .expect("the system random generator works");
    b
}

fn new_signing(n: usize) -> Result<SigningKeyFile, KeyError> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| KeyError::Invalid("cannot generate an Ed25519 key".into()))?;
    Ok(SigningKeyFile {
        kid: format!("sig-{n}-{}", hex(&random::<3>())),
        created: now_ms(),
        pkcs8: B64.encode(doc.as_ref()),
    })
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Keyring {
    /// A new keyring held in memory only (tests, one-off tools).
    pub fn generate() -> Result<Keyring, KeyError> {
        let file = KeyringFile {
            signing: vec![new_signing(1)?],
            data: vec![DataKeyFile {
                kid: 1,
                created: now_ms(),
                key: B64.encode(random::<32>()),
            }],
            index: B64.encode(random::<32>()),
        };
        Keyring::from_file(file, None)
    }

    /// Loads the keyring at `path`, creating it (owner-only permissions) when absent.
    pub fn open_or_create(path: &Path) -> Result<Keyring, KeyError> {
        if path.exists() {
            return Keyring::open(path);
        }
        let mut k = Keyring::generate()?;
        k.path = Some(path.to_path_buf());
        k.save()?;
        tracing::info!(path = %path.display(), "Created a new keyring.");
        Ok(k)
    }

    /// Loads an existing keyring.
    pub fn open(path: &Path) -> Result<Keyring, KeyError> {
        let err = |why: String| KeyError::File {
            path: path.to_path_buf(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: KeyringFile = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        Keyring::from_file(file, Some(path.to_path_buf()))
    }

    fn from_file(file: KeyringFile, path: Option<PathBuf>) -> Result<Keyring, KeyError> {
        let bad = |what: &str| KeyError::Invalid(format!("{what} is malformed"));
        let mut signing = Vec::new();
        for s in &file.signing {
            let pkcs8 = B64.decode(&s.pkcs8).map_err(|_| bad("a signing key"))?;
            let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| bad("a signing key"))?;
            signing.push(SigningKey {
                kid: s.kid.clone(),
                pkcs8,
                pair,
            });
        }
        let mut data = Vec::new();
        for d in &file.data {
            let k: [u8; 32] = B64
                .decode(&d.key)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad("a data key"))?;
            data.push((d.kid, k));
        }
        let index: [u8; 32] = B64
            .decode(&file.index)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("the index key"))?;
        if signing.is_empty() || data.is_empty() {
            return Err(KeyError::Invalid(
                "a keyring needs a signing key and a data key".into(),
            ));
        }
        Ok(Keyring {
            path,
            file,
            signing,
            data,
            index,
        })
    }

    fn save(&self) -> Result<(), KeyError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |why: String| KeyError::File {
            path: path.clone(),
            why,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let text = serde_json::to_string_pretty(&self.file).map_err(|e| err(e.to_string()))?;
        // Written whole to a new file then renamed, so a crash never leaves half a keyring.
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(|e| err(e.to_string()))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| err(e.to_string()))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }

    /// The key that signs now.
    pub fn signing(&self) -> &SigningKey {
        self.signing.last().expect("checked at load")
    }

    /// A signing key by id (current or retired), to verify.
    pub fn signing_key(&self, kid: &str) -> Option<&SigningKey> {
        self.signing.iter().find(|k| k.kid == kid)
    }

    pub fn signing_keys(&self) -> &[SigningKey] {
        &self.signing
    }

    /// The data key that encrypts now, with its id.
    pub fn data_key(&self) -> (u32, &[u8; 32]) {
        let (kid, k) = self.data.last().expect("checked at load");
        (*kid, k)
    }

    /// A data key by id, to decrypt.
    pub fn data_key_by_id(&self, kid: u32) -> Option<&[u8; 32]> {
        self.data.iter().find(|(k, _)| *k == kid).map(|(_, k)| k)
    }

    pub fn index_key(&self) -> &[u8; 32] {
        &self.index
    }

    /// Adds a new signing key; tokens and checkpoints signed by older ones stay verifiable.
    pub fn rotate_signing(&mut self) -> Result<String, KeyError> {
        let s = new_signing(self.file.signing.len() + 1)?;
        let kid = s.kid.clone();
        self.file.signing.push(s);
        *self = Keyring::from_file(self.file.clone(), self.path.clone())?;
        self.save()?;
        Ok(kid)
    }

    /// Adds a new data key; bodies encrypted with older ones stay readable until
    /// re-encrypted (`hutong keys reencrypt`).
    pub fn rotate_data(&mut self) -> Result<u32, KeyError> {
        let kid = self.file.data.iter().map(|d| d.kid).max().unwrap_or(0) + 1;
        self.file.data.push(DataKeyFile {
            kid,
            created: now_ms(),
            key: B64.encode(random::<32>()),
        });
        *self = Keyring::from_file(self.file.clone(), self.path.clone())?;
        self.save()?;
        Ok(kid)
    }

    /// Public signing keys as a JWK Set (`/.well-known/jwks.json`), so that anyone can check
    /// a token or an audit checkpoint.
    pub fn jwks(&self) -> serde_json::Value {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        serde_json::json!({"keys": self.signing.iter().map(|k| serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
            "kid": k.kid, "x": URL_SAFE_NO_PAD.encode(k.public())
        })).collect::<Vec<_>>()})
    }
}

/// Fresh random bytes (codes, secrets, nonces).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    random::<N>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_persists_and_rotates() {
        let dir = std::env::temp_dir().join(format!("hutong-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("keys.json");
        let mut k = Keyring::open_or_create(&path).unwrap();
        let first = k.signing().kid.clone();
        let (d1, key1) = k.data_key();
        let key1 = *key1;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "only the owner may read the keyring");
        }
        let second = k.rotate_signing().unwrap();
        let d2 = k.rotate_data().unwrap();
        let again = Keyring::open(&path).unwrap();
        assert_eq!(again.signing().kid, second);
        assert!(again.signing_key(&first).is_some());
        assert_eq!(again.data_key().0, d2);
        assert_eq!(again.data_key_by_id(d1), Some(&key1));
        assert_eq!(again.index_key(), k.index_key());
        assert_eq!(again.jwks()["keys"].as_array().unwrap().len(), 2);
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(Keyring::open(&path), Err(KeyError::File { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
