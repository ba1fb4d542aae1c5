//! What the session store keeps of a console session, and how it is protected: the row's key is
//! a SHA-256 of the cookie's session id, and the credential (a refresh token, or a pasted access
//! token) is sealed with ChaCha20-Poly1305 under a key derived (HKDF-SHA256) from the same id.
//!
//! The id lives only in the browser's HttpOnly cookie; the server keeps it in memory while the
//! session is in use and never writes it down. So the database alone — the SQLite file (0600)
//! under the state dir, a PostgreSQL dump, a backup — gives neither a cookie that works nor a
//! token: opening a row takes the cookie it belongs to. It also means every control plane
//! sharing one PostgreSQL history can open a session another one started (no key to share).
//!
//! Sealed form: `v1.` + base64url(nonce ‖ ciphertext ‖ tag), the nonce random per seal (a
//! session is resealed once per refresh, far below the birthday bound of 96-bit nonces); the
//! row's key is the associated data, so a sealed value moved to another row does not open.

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The prefix of the sealed form this module writes.
const VERSION: &str = "v1.";
/// HKDF salt: names this use, so the same id never yields a key for anything else.
const SALT: &[u8] = b"iac console session seal v1";

/// The credential that brings a session back after a restart of `iac serve`. Never logged
/// (`Debug` is not derived).
#[derive(Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// A Supabase refresh token: the session gets a fresh access token with it.
    Refresh(String),
    /// A pasted access token (no refresh token): the session ends with it.
    Access(String),
}

/// The store's key for session `id`: SHA-256 of the id, lowercase hex.
pub fn id_hash(id: &str) -> String {
    hex::encode(
        Sha256::new()
            .chain_update(b"iac console session id\0")
            .chain_update(id)
            .finalize(),
    )
}

fn key(id: &str) -> LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(id.as_bytes());
    let okm = prk
        .expand(&[b"chacha20-poly1305"], &CHACHA20_POLY1305)
        .expect("a 32-byte key is a valid HKDF-SHA256 output length");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// Seals `c` for the session `id` (stored under `id_hash(id)`).
pub fn seal(id: &str, c: &Credential) -> Result<String, String> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| "the OS random generator failed; the session was not stored".to_string())?;
    let mut buf = serde_json::to_vec(c).map_err(|e| format!("session credential: {e}"))?;
    key(id)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(id_hash(id).as_bytes()),
            &mut buf,
        )
        .map_err(|_| "sealing the session credential failed".to_string())?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(format!("{VERSION}{}", URL_SAFE_NO_PAD.encode(out)))
}

/// Opens what [`seal`] made for session `id`. Any other id, a changed byte or another row's
/// value is an error (which ends the session).
pub fn open(id: &str, sealed: &str) -> Result<Credential, String> {
    let body = sealed.strip_prefix(VERSION).ok_or_else(|| {
        format!(
            "stored session: expected a sealed value starting {VERSION:?} (written by a newer iac?)"
        )
    })?;
    let raw = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|e| format!("stored session: sealed value is not base64url: {e}"))?;
    if raw.len() < NONCE_LEN {
        return Err("stored session: sealed value too short".into());
    }
    let (nonce, rest) = raw.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce)
        .map_err(|_| "stored session: bad nonce".to_string())?;
    let mut rest = rest.to_vec();
    let plain = key(id)
        .open_in_place(nonce, Aad::from(id_hash(id).as_bytes()), &mut rest)
        .map_err(|_| {
            "stored session: the sealed credential does not open with this session's key"
                .to_string()
        })?;
    serde_json::from_slice(plain).map_err(|e| format!("stored session: credential: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: char) -> String {
        c.to_string().repeat(64)
    }

    #[test]
    fn a_sealed_credential_opens_only_with_its_own_session_id() {
        let c = Credential::Refresh("refresh-secret".into());
        let s = seal(&id('a'), &c).unwrap();
        assert!(s.starts_with("v1."), "{s}");
        assert!(!s.contains("refresh-secret"));
        assert!(open(&id('a'), &s).unwrap() == c);
        // Sealed twice: different nonces, so different text.
        assert_ne!(s, seal(&id('a'), &c).unwrap());
        // Another session's id (its cookie) does not open it.
        let e = open(&id('b'), &s).err().unwrap();
        assert!(e.contains("does not open"), "{e}");
        // One changed byte does not open.
        let mut raw = URL_SAFE_NO_PAD.decode(&s[3..]).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let tampered = format!("v1.{}", URL_SAFE_NO_PAD.encode(raw));
        assert!(open(&id('a'), &tampered).is_err());
        assert!(open(&id('a'), "v2.xyz").err().unwrap().contains("\"v1.\""));
        assert!(open(&id('a'), "v1.").err().unwrap().contains("too short"));
        let pasted = Credential::Access("jwt".into());
        assert!(open(&id('c'), &seal(&id('c'), &pasted).unwrap()).unwrap() == pasted);
    }

    #[test]
    fn the_key_of_a_row_is_a_hash_not_the_id() {
        let h = id_hash(&id('a'));
        assert_eq!(h.len(), 64);
        assert!(h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert!(!h.contains(&id('a')[..8]));
        assert_ne!(h, id_hash(&id('b')));
        assert_eq!(h, id_hash(&id('a')));
    }
}
