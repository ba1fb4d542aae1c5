//! Test helpers for Supabase auth (feature `auth-testkit`, tests only): fresh ES256/RS256 key
//! pairs generated in memory (nothing committed), their public JWKS entries, and tokens signed
//! the way Supabase signs them — plus deliberately bad ones (`alg: none`, HS256 keyed with a
//! public key PEM) for the rejection matrix.

use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A signing key pair with the `kid` it is published under.
pub struct TestKey {
    /// The key id tokens carry in their header and the JWKS publishes.
    pub kid: String,
    /// The signing algorithm (`ES256`, `RS256`, …).
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public key as a JWKS entry (with `kid`, `alg`, `use`).
    pub public_jwk: Value,
    /// The public key as SPKI PEM (what an attacker trying HS/RS confusion would use as secret).
    pub public_pem: String,
}

impl TestKey {
    /// A new P-256 key (ES256).
    pub fn es256(kid: &str) -> Self {
        Self::generate(kid, Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// A new 2048-bit RSA key (RS256).
    pub fn rs256(kid: &str) -> Self {
        Self::generate(kid, Algorithm::RS256, &rcgen::PKCS_RSA_SHA256)
    }

    fn generate(kid: &str, alg: Algorithm, sig: &'static rcgen::SignatureAlgorithm) -> Self {
        let kp = rcgen::KeyPair::generate_for(sig).expect("generate test key pair");
        let pem = kp.serialize_pem();
        let encoding = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .expect("test key PEM loads into jsonwebtoken");
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("public JWK of test key");
        jwk.common.key_id = Some(kid.to_string());
        let mut public_jwk = serde_json::to_value(&jwk).expect("JWK serializes");
        public_jwk["use"] = json!("sig");
        TestKey {
            kid: kid.to_string(),
            alg,
            encoding,
            public_jwk,
            public_pem: kp.public_key_pem(),
        }
    }

    /// A token signed with this key, `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).expect("sign test token")
    }

    /// A token signed with this key but announcing another `alg`/`kid` in its header.
    pub fn sign_with_header(
        &self,
        alg_in_header: &str,
        kid: Option<&str>,
        claims: &Value,
    ) -> String {
        let good = self.sign(claims);
        let sig = good.rsplit('.').next().expect("three segments").to_string();
        let mut header = json!({"alg": alg_in_header, "typ": "JWT"});
        if let Some(k) = kid {
            header["kid"] = json!(k);
        }
        format!(
            "{}.{}.{}",
            b64(&header.to_string()),
            b64(&claims.to_string()),
            sig
        )
    }
}

/// `{"keys": [...]}` with the public halves of `keys`.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.public_jwk.clone()).collect::<Vec<_>>() })
}

/// An HS256 token keyed with `secret` (legacy Supabase projects and service keys), `kid` optional.
pub fn sign_hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret))
        .expect("sign HS256 test token")
}

/// An unsigned `alg: none` token (empty signature segment).
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims.to_string())
    )
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Claims of a Supabase user access token: `iss` = `<url>/auth/v1`, `aud: authenticated`,
/// `exp` = now + `exp_in` seconds.
pub fn user_claims(issuer: &str, sub: &str, role: &str, exp_in: i64) -> Value {
    let now = now();
    json!({
        "iss": issuer, "sub": sub, "aud": "authenticated", "role": role,
        "email": format!("{sub}@example.test"), "iat": now, "exp": now + exp_in,
        "session_id": "00000000-0000-4000-8000-000000000001", "is_anonymous": false,
    })
}

/// Claims of a legacy Supabase `service_role` key: `iss: supabase`, `role`, `ref`, no `sub`.
pub fn legacy_service_claims(exp_in: i64) -> Value {
    let now = now();
    json!({"iss": "supabase", "ref": "testref", "role": "service_role", "iat": now, "exp": now + exp_in})
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}
