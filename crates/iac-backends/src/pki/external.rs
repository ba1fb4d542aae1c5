//! External per-service certificates: an [`iac_core::Pki`] that issues nothing and hands out
//! certificates your own PKI issued, after checking them. Configured by
//! [`super::ExternalCertsConfig`] (`[pki.external]`); never writes a file.
//!
//! What your PKI must put in the certificates (each is checked, and a missing one is an error
//! naming the file and the SAN expected):
//!
//! * the leaf of service `<svc>` in project `<project>`: DNS SANs `<svc>` (the prober verifies
//!   it) and `<svc>.<project>` (peers' sidecars verify it), URI SAN `spiffe://iac/<project>/<svc>`
//!   (the identity the sidecars' RBAC admits on app routes of the same project), extended key
//!   usage serverAuth and clientAuth;
//! * the control-plane client certificate: URI SAN `spiffe://iac/control-plane` (the only
//!   identity admitted on the ControlPlane routes: HealthCheck, StreamLogs, Deploy), extended key
//!   usage clientAuth.
//!
//! Never issue a URI SAN under `spiffe://iac/` to anything else: every holder of a certificate
//! from the CA bundle with `spiffe://iac/<project>/...` can call the apps of `<project>`, and the
//! holder of `spiffe://iac/control-plane` can read every service's logs.

use std::path::Path;

use async_trait::async_trait;
use iac_core::{CertPaths, IssuedCerts, Pki, PkiError, ProjectName, ServiceName};

use super::dev_ca::LeafNames;
use super::{
    CONTROL_PLANE_URI, ExternalCertsConfig, expand, identity_fingerprint, key_matches, now_unix,
    read_certs, read_key, rfc3339,
};

/// Serves certificates from configured paths, verified on every call.
#[derive(Debug, Clone)]
pub struct ExternalPki {
    config: ExternalCertsConfig,
}

impl ExternalPki {
    /// A PKI reading the operator's certificates at the paths `config` gives.
    pub fn new(config: ExternalCertsConfig) -> ExternalPki {
        ExternalPki { config }
    }

    /// Where a service's certificate and key are expected.
    pub fn leaf_paths(&self, project: &ProjectName, service: &ServiceName) -> CertPaths {
        CertPaths {
            ca: self.config.ca.clone(),
            cert: expand(&self.config.cert, project.as_str(), service.as_str()),
            key: expand(&self.config.key, project.as_str(), service.as_str()),
        }
    }

    /// The SANs the control-plane certificate must carry: only its URI SAN (no hostname is
    /// ever verified against it).
    pub fn control_plane_names() -> LeafNames {
        LeafNames {
            dns: Vec::new(),
            uri: vec![CONTROL_PLANE_URI.to_string()],
        }
    }

    /// Checks `paths` and returns them with their fingerprint. Every name in `required` must be
    /// a SAN of the certificate (DNS and URI respectively); `server` also requires serverAuth.
    pub fn check(
        &self,
        paths: &CertPaths,
        required: &LeafNames,
        server: bool,
    ) -> Result<IssuedCerts, PkiError> {
        if self.config.ca.as_os_str().is_empty() {
            return Err(PkiError::Refused(
                "pki.external.ca is empty; expected the path of the CA bundle (PEM)".into(),
            ));
        }
        let (ca_pem, cas) = read_certs(&paths.ca)?;
        let (cert_pem, certs) = read_certs(&paths.cert)?;
        let (key_pem, key) = read_key(&paths.key)?;
        let leaf = &certs[0];
        let invalid = |path: &Path, why: String| PkiError::Invalid {
            path: path.to_path_buf(),
            why,
        };
        if !key_matches(&key, leaf) {
            return Err(invalid(
                &paths.key,
                format!("is not the key of {}", paths.cert.display()),
            ));
        }
        let signed = cas.iter().any(|ca| leaf.verify_signed_by(ca).is_ok())
            || certs[1..].iter().any(|inter| {
                leaf.verify_signed_by(inter).is_ok()
                    && cas.iter().any(|ca| inter.verify_signed_by(ca).is_ok())
            });
        if !signed {
            return Err(invalid(
                &paths.cert,
                format!(
                    "is not signed by the CA bundle {} (issuer {:?})",
                    paths.ca.display(),
                    leaf.issuer
                ),
            ));
        }
        let now = now_unix();
        if leaf.not_after <= now {
            return Err(invalid(
                &paths.cert,
                format!("expired {}", rfc3339(leaf.not_after)),
            ));
        }
        if leaf.not_before > now + 300 {
            return Err(invalid(
                &paths.cert,
                format!("not valid before {}", rfc3339(leaf.not_before)),
            ));
        }
        if let Some(name) = required.dns.iter().find(|n| !leaf.dns_names.contains(n)) {
            return Err(invalid(
                &paths.cert,
                format!(
                    "expected a DNS subjectAltName {name:?}, found {:?}",
                    leaf.dns_names
                ),
            ));
        }
        if let Some(name) = required.uri.iter().find(|n| !leaf.uri_names.contains(n)) {
            return Err(invalid(
                &paths.cert,
                format!(
                    "expected a URI subjectAltName {name:?} (the identity the sidecars' RBAC admits), found {:?}",
                    leaf.uri_names
                ),
            ));
        }
        if !leaf.client_auth || (server && !leaf.server_auth) {
            return Err(invalid(
                &paths.cert,
                format!(
                    "expected extended key usage {}",
                    if server {
                        "serverAuth and clientAuth"
                    } else {
                        "clientAuth"
                    }
                ),
            ));
        }
        Ok(IssuedCerts {
            paths: paths.clone(),
            fingerprint: identity_fingerprint(&ca_pem, &cert_pem, &key_pem),
        })
    }
}

#[async_trait]
impl Pki for ExternalPki {
    async fn issue(
        &self,
        project: &ProjectName,
        service: &ServiceName,
    ) -> Result<IssuedCerts, PkiError> {
        if self.config.cert.is_empty() || self.config.key.is_empty() {
            return Err(PkiError::Refused(
                "pki.external.cert and pki.external.key must be path patterns such as /etc/pki/{project}/{service}.crt".into(),
            ));
        }
        let paths = self.leaf_paths(project, service);
        let me = self.clone();
        let names = LeafNames::service(project, service);
        tokio::task::spawn_blocking(move || me.check(&paths, &names, true))
            .await
            .map_err(|e| PkiError::Generate(format!("certificate check failed: {e}")))?
    }

    async fn client_identity(&self) -> Result<IssuedCerts, PkiError> {
        let paths = CertPaths {
            ca: self.config.ca.clone(),
            cert: self.config.control_plane_cert.clone(),
            key: self.config.control_plane_key.clone(),
        };
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.check(&paths, &Self::control_plane_names(), false))
            .await
            .map_err(|e| PkiError::Generate(format!("certificate check failed: {e}")))?
    }
}
