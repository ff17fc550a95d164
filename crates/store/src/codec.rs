//! Compression of stored bodies: zstd, with a dictionary trained on the store's own data.
//!
//! A FHIR resource is about a kilobyte of JSON whose keys and code systems repeat from one
//! resource to the next; compressed alone it shrinks little (each frame carries its own
//! entropy tables). A dictionary trained from the first few thousand stored resources holds
//! what they share, so each body compresses to a fraction and decompresses faster. Every
//! frame names its dictionary, so bodies written before (or without) one stay readable.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use zstd::zstd_safe::{self, CCtx, CDict, DCtx, DDict};

use crate::StoreError;

const LEVEL: i32 = 3;
/// Dictionary size: large enough for the vocabulary of FHIR JSON, small enough to stay hot.
pub const DICT_BYTES: usize = 96 * 1024;
/// Resources written before a dictionary is trained.
pub const TRAIN_AFTER: u64 = 3000;

struct Dict {
    cdict: CDict<'static>,
    ddict: DDict<'static>,
}

/// Encryption of identity data at rest, supplied by the access layer: bodies of the types
/// that carry a person's identity are sealed, and their identifying search values are
/// replaced by keyed hashes, so the database holds neither in the clear yet they can still be
/// found by exact value (and names by prefix).
pub trait Protector: Send + Sync {
    /// Whether bodies of `rtype` are sealed.
    fn seals(&self, rtype: &str) -> bool;
    /// Encrypts a (compressed) body; the result starts with [`SEALED`].
    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, String>;
    /// Decrypts what `seal` produced (with whichever key it names).
    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, String>;
    /// Whether the index values of search parameter `code` of `rtype` are keyed hashes.
    fn blinds(&self, rtype: &str, code: &str) -> bool;
    /// The keyed hash of a value, `kind` separating uses (prefix, exact, token).
    fn blind(&self, kind: &str, value: &str) -> String;
}

/// The first bytes of a sealed body (never the start of a zstd frame).
pub const SEALED: &[u8; 4] = b"HTE1";

/// Longest name prefix indexed as a keyed hash; longer values are indexed whole as well.
pub const BLIND_PREFIX_CHARS: usize = 32;

/// The store's compressor: the dictionaries it knows and the one new bodies use, and the
/// protector that seals identity data.
#[derive(Default)]
pub struct Codec {
    current: RwLock<Option<(u32, Arc<Dict>)>>,
    all: RwLock<HashMap<u32, Arc<Dict>>>,
    protector: RwLock<Option<Arc<dyn Protector>>>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("current", &self.current_id())
            .finish()
    }
}

thread_local! {
    static CCTX: RefCell<CCtx<'static>> = RefCell::new(CCtx::create());
    static DCTX: RefCell<DCtx<'static>> = RefCell::new(DCtx::create());
}

fn zerr(code: usize) -> StoreError {
    StoreError::Corrupt(format!("zstd: {}", zstd_safe::get_error_name(code)))
}

impl Codec {
    /// Registers a dictionary (as trained bytes); `current` makes new bodies use it.
    pub fn add(&self, data: &[u8], current: bool) -> Option<u32> {
        let id = zstd_safe::get_dict_id_from_dict(data)?.get();
        let d = Arc::new(Dict {
            cdict: CDict::try_create(data, LEVEL)?,
            ddict: DDict::create(data),
        });
        self.all
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, d.clone());
        if current {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((id, d));
        }
        Some(id)
    }

    /// Sets how identity data is protected (once, when the store is opened).
    pub fn set_protector(&self, p: Arc<dyn Protector>) {
        *self.protector.write().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    pub fn protector(&self) -> Option<Arc<dyn Protector>> {
        self.protector
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Compresses a body of `rtype`, and seals it when its type carries identity data.
    pub fn encode(&self, rtype: &str, src: &[u8]) -> Result<Vec<u8>, StoreError> {
        let z = self.compress(src)?;
        match self.protector() {
            Some(p) if p.seals(rtype) => p
                .seal(&z)
                .map_err(|e| StoreError::Corrupt(format!("cannot seal a body: {e}"))),
            _ => Ok(z),
        }
    }

    pub fn current_id(&self) -> Option<u32> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(id, _)| *id)
    }

    pub fn compress(&self, src: &[u8]) -> Result<Vec<u8>, StoreError> {
        let dict = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, d)| d.clone());
        let mut dst = Vec::with_capacity(zstd_safe::compress_bound(src.len()));
        CCTX.with(|c| {
            let mut c = c.borrow_mut();
            match &dict {
                Some(d) => c.compress_using_cdict(&mut dst, src, &d.cdict),
                None => c.compress(&mut dst, src, LEVEL),
            }
        })
        .map_err(zerr)?;
        Ok(dst)
    }

    pub fn decompress(&self, blob: &[u8]) -> Result<Vec<u8>, StoreError> {
        if blob.is_empty() {
            return Ok(Vec::new());
        }
        if blob.starts_with(SEALED) {
            let p = self.protector().ok_or_else(|| {
                StoreError::Corrupt(
                    "a body is encrypted but the store was opened without the keyring".into(),
                )
            })?;
            let z = p
                .open(blob)
                .map_err(|e| StoreError::Corrupt(format!("cannot decrypt a body: {e}")))?;
            return self.decompress(&z);
        }
        let size = match zstd_safe::get_frame_content_size(blob) {
            Ok(Some(n)) => n as usize,
            _ => {
                return Err(StoreError::Corrupt(
                    "a stored body has no content size".into(),
                ))
            }
        };
        let mut dst = Vec::with_capacity(size);
        let dict = match zstd_safe::get_dict_id_from_frame(blob) {
            None => None,
            Some(id) => Some(
                self.all
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&id.get())
                    .cloned()
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("body needs unknown dictionary {id}"))
                    })?,
            ),
        };
        DCTX.with(|d| {
            let mut d = d.borrow_mut();
            match &dict {
                Some(x) => d.decompress_using_ddict(&mut dst, blob, &x.ddict),
                None => d.decompress(&mut dst, blob),
            }
        })
        .map_err(zerr)?;
        Ok(dst)
    }
}

/// Trains a dictionary from sample bodies (uncompressed JSON).
pub fn train(samples: &[Vec<u8>]) -> Option<Vec<u8>> {
    zstd::dict::from_samples(samples, DICT_BYTES).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize) -> Vec<u8> {
        format!(
            r#"{{"resourceType":"Observation","id":"o{i}","status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"{}","display":"Glucose"}}]}},"subject":{{"reference":"Patient/p{}"}},"valueQuantity":{{"value":{}.{},"unit":"mg/dL"}}}}"#,
            1000 + i % 37,
            i % 101,
            i % 200,
            i % 10
        )
        .into_bytes()
    }

    #[test]
    fn dictionary_shrinks_bodies_and_old_frames_stay_readable() {
        let codec = Codec::default();
        let before = codec.compress(&sample(1)).unwrap();
        let samples: Vec<Vec<u8>> = (0..2000).map(sample).collect();
        let dict = train(&samples).unwrap();
        codec.add(&dict, true).unwrap();
        let after = codec.compress(&sample(1)).unwrap();
        assert!(
            after.len() * 2 < before.len(),
            "{} vs {}",
            after.len(),
            before.len()
        );
        assert_eq!(codec.decompress(&after).unwrap(), sample(1));
        assert_eq!(codec.decompress(&before).unwrap(), sample(1));
        // A store that does not know the dictionary says so instead of returning garbage.
        assert!(matches!(
            Codec::default().decompress(&after),
            Err(StoreError::Corrupt(_))
        ));
    }
}
