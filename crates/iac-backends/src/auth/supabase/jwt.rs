//! Local JWT verification: the JOSE header read without trusting it, the key chosen by `kid`
//! (JWKS) or the HS256 secret, signature and claims (`exp`, `nbf`, `aud`, `iss`) checked; the
//! verified payload travels on in [`Principal::claims`] for rules on claims.

use base64::Engine as _;
use iac_core::{AuthError, Principal};
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
pub(super) struct Claims {
    sub: Option<String>,
    role: Option<String>,
    iss: Option<String>,
    email: Option<String>,
    exp: Option<u64>,
}

/// The decoded JOSE header as JSON (no verification).
pub(super) fn header_json(token: &str) -> Result<serde_json::Value, AuthError> {
    let seg = token.split('.').next().unwrap_or("");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed("JWT header is not base64url".into()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed("JWT header is not JSON".into()))?;
    if !v.is_object() {
        return Err(AuthError::Malformed(
            "JWT header is not a JSON object".into(),
        ));
    }
    Ok(v)
}

pub(super) fn header_alg(token: &str) -> Result<String, AuthError> {
    let h = header_json(token)?;
    match h.get("alg") {
        Some(serde_json::Value::String(a)) => Ok(a.clone()),
        _ => Err(AuthError::Invalid("JWT header has no alg".into())),
    }
}

pub(super) fn header_kid(token: &str) -> Result<Option<String>, AuthError> {
    let h = header_json(token)?;
    Ok(h.get("kid").and_then(|k| k.as_str()).map(str::to_string))
}

/// The `sub` of an already verified token (used to compare with Supabase's answer).
pub(super) fn insecure_sub(token: &str) -> Option<String> {
    let seg = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("sub").and_then(|s| s.as_str()).map(str::to_string)
}

pub(super) fn alg_label(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

pub(super) fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidSignature => AuthError::Invalid("bad signature".into()),
        K::InvalidAudience => AuthError::Invalid("audience not accepted".into()),
        K::InvalidIssuer => AuthError::Invalid("token issuer is not this Supabase project".into()),
        K::MissingRequiredClaim(c) => AuthError::Invalid(format!("token has no {c} claim")),
        K::InvalidClaimFormat(c) => AuthError::Invalid(format!("claim {c} has the wrong type")),
        K::InvalidAlgorithm
        | K::MissingAlgorithm
        | K::InvalidAlgorithmName
        | K::UnsupportedAlgorithm => AuthError::Invalid("algorithm not accepted".into()),
        K::Base64(_) | K::Json(_) | K::Utf8(_) | K::InvalidToken => {
            AuthError::Malformed("JWT does not decode".into())
        }
        _ => AuthError::Invalid("token could not be verified".into()),
    }
}

impl SupabaseVerifier {
    /// Local JWT verification: header, key choice, signature, claims. Returns the principal,
    /// whether the token has a `sub`, and its `exp`.
    pub(super) async fn verify_jwt(
        &self,
        token: &str,
    ) -> Result<(Principal, bool, Option<u64>), AuthError> {
        let alg_name = header_alg(token)?;
        let (alg, key, how) = match alg_name.as_str() {
            "HS256" => match &self.hs_key {
                Some(k) => (
                    Algorithm::HS256,
                    k.clone(),
                    "jwt HS256 (jwt secret)".to_string(),
                ),
                None => {
                    if self.is_configured_service_key(token) {
                        let p = Self::service_principal(
                            "configured service-role key (constant-time match)",
                        );
                        return Ok((p, false, None));
                    }
                    return Err(AuthError::Invalid(
                        "HS256 token but no SUPABASE_JWT_SECRET is configured to verify it".into(),
                    ));
                }
            },
            "ES256" | "ES384" | "RS256" | "RS384" | "RS512" => {
                let kid = header_kid(token)?.ok_or_else(|| {
                    AuthError::Invalid(format!("{alg_name} token without a kid header"))
                })?;
                let k = self.jwks_key(&kid).await?;
                let key_alg = alg_label(k.alg);
                if key_alg != alg_name {
                    return Err(AuthError::Invalid(format!(
                        "token alg {alg_name} does not match the {key_alg} key it names"
                    )));
                }
                (k.alg, k.key, format!("jwt {key_alg} (jwks)"))
            }
            "none" | "None" | "NONE" => {
                return Err(AuthError::Invalid("alg none is not accepted".into()));
            }
            other => {
                let shown: String = other
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .take(16)
                    .collect();
                return Err(AuthError::Invalid(format!(
                    "unsupported alg {shown:?}: expected ES256, RS256 or HS256"
                )));
            }
        };
        let mut v = Validation::new(alg);
        v.leeway = self.cfg.clock_skew.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        if self.cfg.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.cfg.audiences);
        }
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &v)
                .map_err(map_jwt_error)?;
        let all = data.claims;
        let c: Claims = serde_json::from_value(serde_json::Value::Object(all.clone()))
            .map_err(|_| AuthError::Malformed("JWT claims have the wrong types".into()))?;
        let role = c
            .role
            .filter(|r| !r.is_empty())
            .ok_or_else(|| AuthError::Invalid("token has no role claim".into()))?;
        let has_sub = c.sub.as_deref().is_some_and(|s| !s.is_empty());
        if let Some(expected) = &self.issuer {
            let iss = c.iss.as_deref().unwrap_or("");
            let legacy_service_key = !has_sub && role == "service_role" && iss == "supabase";
            if iss != expected && !legacy_service_key {
                return Err(AuthError::Invalid(if iss.is_empty() {
                    "token has no iss claim".to_string()
                } else {
                    "token issuer is not this Supabase project".to_string()
                }));
            }
        }
        let principal = Principal {
            subject: c
                .sub
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| role.clone()),
            role,
            email: c.email,
            method: how,
            claims: all,
        };
        Ok((principal, has_sub, c.exp))
    }
}
