//! The mesh PKI: who issues the certificates every sidecar and the control plane use.
//!
//! Two backends implement [`iac_core::Pki`]:
//!
//! * [`dev_ca::DevCa`] (default): a CA iac owns under `secrets_dir` (`./secrets`):
//!   `ca.pem` + `ca.key` (key 0600, directory 0700), one leaf per service at
//!   `<secrets>/<project>/<svc>.{pem,key}` (DNS SANs `<svc>` and `<svc>.<project>`, URI SAN
//!   `spiffe://iac/<project>/<svc>`, EKU serverAuth + clientAuth) and one control-plane client
//!   certificate `<secrets>/iac-control-plane.{pem,key}` (CN/DNS SAN `iac-control-plane`, URI SAN
//!   `spiffe://iac/control-plane`, EKU clientAuth). Every file is written atomically; leaves are
//!   reissued when missing, unparseable, expiring within `renew_before`, not matching their
//!   key or names, or not signed by the current CA. `iac ca init|show|rotate` call
//!   [`dev_ca::DevCa::init`], [`dev_ca::DevCa::show`] and [`dev_ca::DevCa::rotate`].
//!
//!   **Using a real PKI, option 1 (an existing CA):** put your issuing CA certificate and its
//!   key at `<secrets>/ca.pem` / `<secrets>/ca.key`, or point `ca_cert` / `ca_key` at them.
//!   `ca.pem` may be a bundle: the first certificate is the issuer (it must match the key), the
//!   whole bundle is what sidecars and the prober trust (append the parents of an intermediate).
//!   With `ca_cert` set, iac never creates or rotates the CA; it only issues leaves from it.
//!
//! * [`external::ExternalPki`]: **option 2 (per-service certificates you issue yourself):** set
//!   `[pki.external]` with the CA bundle and path patterns for each service's certificate and key
//!   (`{project}` and `{service}` are substituted) plus the control-plane client certificate.
//!   iac never writes anything in this mode; it checks each file (parses, not expired, signed by
//!   the CA bundle, key matches, the SANs below present) and fails with the file's path otherwise.
//!
//! **Names the mesh relies on** (whoever issues the certificates):
//!
//! | certificate | SANs | checked by |
//! |---|---|---|
//! | service `<svc>` of `<project>` | DNS `<svc>` | the prober's hostname verification |
//! | | DNS `<svc>.<project>` | a peer's sidecar, outbound (`match_typed_subject_alt_names`) |
//! | | URI `spiffe://iac/<project>/<svc>` | every sidecar of `<project>`, inbound RBAC on app routes |
//! | control plane | URI `spiffe://iac/control-plane` | every sidecar, inbound RBAC on the ControlPlane routes |
//!
//! Envoy's RBAC `authenticated.principal_name` is matched against every URI SAN, then every
//! DNS SAN, then the subject of the verified client certificate; the URI SANs above are the
//! identities: a DNS name cannot contain `://`, so no service certificate can pose as
//! `spiffe://iac/control-plane` or as a service of another project, even under the same CA
//! (a service named `iac-control-plane` gets `spiffe://iac/<project>/iac-control-plane`).
//!
//! [`from_config`] picks the backend. Helpers in this module parse and check X.509 files.

pub mod dev_ca;
pub mod external;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use iac_core::{Pki, PkiError};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::*;

pub use dev_ca::{CaInfo, DevCa, InitOutcome, LeafNames};
pub use external::ExternalPki;

/// Name (CN and DNS SAN) of the control plane's client certificate.
pub const CONTROL_PLANE_NAME: &str = "iac-control-plane";

/// SPIFFE trust domain of every identity in the mesh.
pub const TRUST_DOMAIN: &str = "iac";

/// URI SAN of the control plane's client certificate: the only principal a sidecar admits on
/// the `/iac.controlplane.v1.ControlPlane/*` routes.
pub const CONTROL_PLANE_URI: &str = "spiffe://iac/control-plane";

/// URI SAN of the leaf of `service` in `project`: `spiffe://iac/<project>/<service>`, or
/// `spiffe://iac/<project>/<svc>/sandbox/<sandbox>` for a sandbox copy (named
/// `<svc>--sb-<sandbox>`, [`iac_core::sandbox::copy_name`]). Both start with
/// [`project_uri_prefix`], so the project's sidecars admit a copy as they admit its baseline.
pub fn service_uri(project: &str, service: &str) -> String {
    format!(
        "{}{}",
        project_uri_prefix(project),
        iac_core::sandbox::identity_path(service)
    )
}

/// The prefix every service URI of `project` starts with (`spiffe://iac/<project>/`); a
/// sidecar admits on its app routes exactly the principals with this prefix.
pub fn project_uri_prefix(project: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{project}/")
}

/// `[pki]` configuration. All paths are relative to the working directory unless absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PkiConfig {
    /// Where the CA, the leaves and the control-plane identity live (`./secrets`).
    pub secrets_dir: PathBuf,
    /// An existing CA certificate (bundle) to issue from instead of `<secrets>/ca.pem`.
    /// Setting it means the CA is managed outside iac: never created, never rotated.
    pub ca_cert: Option<PathBuf>,
    /// The key of `ca_cert` (default `<secrets>/ca.key`).
    pub ca_key: Option<PathBuf>,
    /// Validity of a newly created dev CA (`"3650d"`).
    #[serde(with = "iac_core::duration")]
    pub ca_validity: std::time::Duration,
    /// Validity of a newly issued leaf (`"90d"`).
    #[serde(with = "iac_core::duration")]
    pub leaf_validity: std::time::Duration,
    /// A leaf expiring within this long is reissued (`"30d"`).
    #[serde(with = "iac_core::duration")]
    pub renew_before: std::time::Duration,
    /// Common name prefix of a created dev CA (a UTC timestamp is appended).
    pub ca_common_name: String,
    /// Use certificates issued elsewhere, per service, instead of issuing any.
    pub external: Option<ExternalCertsConfig>,
}

impl Default for PkiConfig {
    fn default() -> Self {
        PkiConfig {
            secrets_dir: PathBuf::from("secrets"),
            ca_cert: None,
            ca_key: None,
            ca_validity: std::time::Duration::from_secs(3650 * 86_400),
            leaf_validity: std::time::Duration::from_secs(90 * 86_400),
            renew_before: std::time::Duration::from_secs(30 * 86_400),
            ca_common_name: "iac dev CA".into(),
            external: None,
        }
    }
}

/// `[pki.external]`: certificates issued by your own PKI, one pair per service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ExternalCertsConfig {
    /// CA bundle (PEM) that signed every certificate below; sidecars and the prober trust it.
    pub ca: PathBuf,
    /// Pattern of a service's certificate (PEM), e.g. `/etc/pki/{project}/{service}.crt`.
    pub cert: String,
    /// Pattern of a service's private key (PEM), e.g. `/etc/pki/{project}/{service}.key`.
    pub key: String,
    /// The control plane's client certificate and key.
    pub control_plane_cert: PathBuf,
    /// The control plane's private key.
    pub control_plane_key: PathBuf,
}

/// The configured backend: [`ExternalPki`] when `external` is set, else [`DevCa`].
pub fn from_config(config: &PkiConfig) -> Arc<dyn Pki> {
    match &config.external {
        Some(ext) => Arc::new(ExternalPki::new(ext.clone())),
        None => Arc::new(DevCa::new(config.clone())),
    }
}

/// What iac needs to know about one certificate, copied out of the parsed DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The certificate's DER bytes.
    pub der: Vec<u8>,
    /// The subject, as text.
    pub subject: String,
    /// The issuer, as text.
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// URI subject alternative names (SPIFFE ids).
    pub uri_names: Vec<String>,
    /// Basic constraints say CA.
    pub is_ca: bool,
    /// Extended key usage allows TLS server authentication.
    pub server_auth: bool,
    /// Extended key usage allows TLS client authentication.
    pub client_auth: bool,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    /// `sha256:<hex>` of the DER.
    pub fingerprint: String,
}

impl CertSummary {
    /// Parses one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertSummary, String> {
        let (rest, x) =
            X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        if !rest.is_empty() {
            return Err(format!(
                "{} trailing bytes after the certificate",
                rest.len()
            ));
        }
        let (mut dns_names, mut uri_names) = (Vec::new(), Vec::new());
        match x.subject_alternative_name() {
            Ok(Some(san)) => {
                for name in &san.value.general_names {
                    match name {
                        GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                        GeneralName::URI(u) => uri_names.push(u.to_string()),
                        _ => {}
                    }
                }
            }
            Ok(None) => {}
            Err(e) => return Err(format!("bad subjectAltName extension: {e}")),
        }
        let (server_auth, client_auth) = match x.extended_key_usage() {
            Ok(Some(eku)) => (
                eku.value.server_auth || eku.value.any,
                eku.value.client_auth || eku.value.any,
            ),
            Ok(None) => (true, true),
            Err(e) => return Err(format!("bad extendedKeyUsage extension: {e}")),
        };
        Ok(CertSummary {
            der: der.to_vec(),
            subject: x.subject().to_string(),
            issuer: x.issuer().to_string(),
            not_before: x.validity().not_before.timestamp(),
            not_after: x.validity().not_after.timestamp(),
            dns_names,
            uri_names,
            is_ca: x.is_ca(),
            server_auth,
            client_auth,
            spki: x.public_key().raw.to_vec(),
            fingerprint: iac_core::fsutil::sha256_tagged(der),
        })
    }

    /// Checks that `issuer` signed this certificate (names and signature).
    pub fn verify_signed_by(&self, issuer: &CertSummary) -> Result<(), String> {
        if self.issuer != issuer.subject {
            return Err(format!(
                "issued by {:?}, not by the CA {:?}",
                self.issuer, issuer.subject
            ));
        }
        let (_, leaf) = X509Certificate::from_der(&self.der).map_err(|e| e.to_string())?;
        let (_, ca) = X509Certificate::from_der(&issuer.der).map_err(|e| e.to_string())?;
        leaf.verify_signature(Some(ca.public_key())).map_err(|e| {
            format!(
                "signature does not verify against the CA {:?} ({e})",
                issuer.subject
            )
        })
    }

    /// Seconds until `not_after`, from `now` (unix seconds); negative once expired.
    pub fn remaining(&self, now: i64) -> i64 {
        self.not_after - now
    }
}

/// Every certificate in a PEM buffer, in order. Errors when there is none or one is invalid.
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertSummary>, String> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("invalid PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        out.push(CertSummary::from_der(&block.contents)?);
    }
    if out.is_empty() {
        return Err("expected at least one PEM CERTIFICATE block, found none".into());
    }
    Ok(out)
}

/// Reads and parses a PEM certificate file (bundle allowed).
pub fn read_certs(path: &Path) -> Result<(Vec<u8>, Vec<CertSummary>), PkiError> {
    let bytes = std::fs::read(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = parse_pem_certs(&bytes).map_err(|why| PkiError::Invalid {
        path: path.to_path_buf(),
        why,
    })?;
    Ok((bytes, certs))
}

/// Reads a PEM private key; errors name the file but never include its content.
pub fn read_key(path: &Path) -> Result<(Vec<u8>, rcgen::KeyPair), PkiError> {
    let bytes = std::fs::read(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|_| PkiError::Invalid {
        path: path.to_path_buf(),
        why: "expected a PEM private key, found binary data".into(),
    })?;
    let key = rcgen::KeyPair::from_pem(text).map_err(|e| PkiError::Invalid {
        path: path.to_path_buf(),
        why: format!("expected a PEM (PKCS#8, SEC1 or PKCS#1) private key: {e}"),
    })?;
    Ok((bytes, key))
}

/// Whether `key` is the private half of `cert`.
pub fn key_matches(key: &rcgen::KeyPair, cert: &CertSummary) -> bool {
    use rcgen::PublicKeyData;
    key.subject_public_key_info() == cert.spki
}

/// The fingerprint of an issued identity: changes whenever the CA, the certificate or the key does.
pub fn identity_fingerprint(ca: &[u8], cert: &[u8], key: &[u8]) -> String {
    let mut all = Vec::with_capacity(ca.len() + cert.len() + key.len() + 2);
    all.extend_from_slice(ca);
    all.push(0);
    all.extend_from_slice(cert);
    all.push(0);
    all.extend_from_slice(key);
    iac_core::fsutil::sha256_tagged(&all)
}

/// Current unix time in seconds.
pub(crate) fn now_unix() -> i64 {
    ::time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Formats unix seconds as RFC 3339 UTC.
pub(crate) fn rfc3339(ts: i64) -> String {
    ::time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(&::time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}

/// Joins a path pattern's placeholders.
pub(crate) fn expand(pattern: &str, project: &str, service: &str) -> PathBuf {
    PathBuf::from(
        pattern
            .replace("{project}", project)
            .replace("{service}", service),
    )
}
