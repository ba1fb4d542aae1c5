//! Unit tests of the Supabase verifier's pure parts: config defaults and errors, durations,
//! JWKS parsing, header parsing.

use base64::Engine as _;
use iac_core::AuthError;
use jsonwebtoken::Algorithm;
use std::time::Duration;

use super::jwks::parse_jwks;
use super::jwt::header_alg;
use super::*;

#[test]
fn defaults_and_env() {
    let mut c = SupabaseConfig::default();
    assert!(!c.confirms());
    c.apply_env(|k| match k {
        "SUPABASE_URL" => Some("https://x.supabase.co/".into()),
        "SUPABASE_SERVICE_ROLE_KEY" => Some("sb_secret_k".into()),
        _ => None,
    });
    assert!(c.confirms());
    assert_eq!(c.allowed_roles, vec!["service_role"]);
    let v = SupabaseVerifier::new(c.clone()).unwrap();
    assert_eq!(v.issuer.as_deref(), Some("https://x.supabase.co/auth/v1"));
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("sb_secret_k"), "{dbg}");
    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains("sb_secret_k"), "{json}");
}

#[test]
fn anon_key_is_checked_for_console_sign_in_and_redacted() {
    assert!(
        SupabaseConfig::default()
            .console_sign_in()
            .unwrap()
            .is_none()
    );
    let mut c = SupabaseConfig {
        anon_key: Some(Secret::new("sb_publishable_abc")),
        ..Default::default()
    };
    let e = c.console_sign_in().unwrap_err().to_string();
    assert!(e.contains("SUPABASE_URL") && e.contains("anon_key"), "{e}");
    c.url = Some("https://x.supabase.co/".into());
    let (url, key) = c.console_sign_in().unwrap().unwrap();
    assert_eq!(url, "https://x.supabase.co");
    assert_eq!(key.expose(), "sb_publishable_abc");
    c.anon_key = Some(Secret::new("two words"));
    assert!(
        c.console_sign_in()
            .unwrap_err()
            .to_string()
            .contains("one token")
    );
    c.anon_key = Some(Secret::new("sb_publishable_abc"));
    assert!(
        !format!("{c:?}").contains("sb_publishable_abc"),
        "Debug redacts it"
    );
    let mut d = SupabaseConfig::default();
    d.apply_env(|k| (k == "SUPABASE_ANON_KEY").then(|| " anon-from-env ".to_string()));
    assert_eq!(d.anon_key.unwrap().expose(), "anon-from-env");
}

#[test]
fn config_errors_name_the_setting() {
    let e = SupabaseVerifier::new(SupabaseConfig::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("SUPABASE_URL"), "{e}");
    let c = SupabaseConfig {
        url: Some("https://x.supabase.co".into()),
        ..Default::default()
    };
    let e = SupabaseVerifier::new(c).err().unwrap();
    assert!(e.to_string().contains("SUPABASE_SERVICE_ROLE_KEY"), "{e}");
    let c = SupabaseConfig {
        url: Some("ftp://x".into()),
        ..Default::default()
    };
    assert!(
        SupabaseVerifier::new(c)
            .err()
            .unwrap()
            .to_string()
            .contains("http(s)")
    );
    let c = SupabaseConfig {
        jwt_secret: Some("s".into()),
        allowed_roles: vec![],
        ..Default::default()
    };
    assert!(
        SupabaseVerifier::new(c)
            .err()
            .unwrap()
            .to_string()
            .contains("nobody")
    );
}

#[test]
fn durations_parse_from_toml_style_strings() {
    let c: SupabaseConfig =
        serde_json::from_str(r#"{"jwks_cache_ttl":"5m","min_refetch_interval":"2s"}"#).unwrap();
    assert_eq!(c.jwks_cache_ttl, Duration::from_secs(300));
    assert_eq!(c.min_refetch_interval, Duration::from_secs(2));
    let e = serde_json::from_str::<SupabaseConfig>(r#"{"http_timeout":"soon"}"#).unwrap_err();
    assert!(e.to_string().contains("soon"), "{e}");
}

#[test]
fn jwks_skips_symmetric_and_mismatched_keys() {
    let doc = br#"{"keys":[
        {"kty":"oct","kid":"sym","k":"c2VjcmV0"},
        {"kty":"EC","kid":"ec","crv":"P-256","alg":"RS256",
         "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        {"kty":"EC","kid":"ec2","crv":"P-256",
         "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        {"kty":"weird","kid":"w"}
    ]}"#;
    let keys = parse_jwks(doc).unwrap();
    assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ec2"]);
    assert_eq!(keys["ec2"].alg, Algorithm::ES256);
    assert!(parse_jwks(b"{}").is_err());
}

#[test]
fn header_parsing() {
    let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let t = format!(
        "{}.{}.",
        enc(r#"{"alg":"none"}"#),
        enc(r#"{"role":"service_role"}"#)
    );
    assert_eq!(header_alg(&t).unwrap(), "none");
    let t = format!("{}.e30.x", enc("[]"));
    assert!(matches!(header_alg(&t), Err(AuthError::Malformed(_))));
}
