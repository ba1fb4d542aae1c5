//! The dev CA: an [`iac_core::Pki`] that owns a CA under `secrets_dir` and issues the mesh's
//! leaves and the control-plane client certificate from it (rcgen, ECDSA P-256), plus the
//! `iac ca init|show|rotate` operations. See the [module docs](super) for the file layout.
//!
//! Every operation takes an exclusive lock on `<secrets>/.pki.lock` (so parallel issues and
//! several `iac` processes never race on the CA), writes with [`write_atomic`] (keys 0600,
//! directories 0700) and verifies what it reads: the CA key must match the CA certificate, and a
//! leaf is only reused when it parses, matches its key and names, is signed by the current CA
//! and does not expire within `renew_before`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use iac_core::fsutil::{FileLock, write_atomic};
use iac_core::{CertPaths, IssuedCerts, Pki, PkiError, ProjectName, ServiceName};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::Serialize;
use time::{Duration, OffsetDateTime};

use super::{
    CONTROL_PLANE_NAME, CONTROL_PLANE_URI, CertSummary, PkiConfig, identity_fingerprint,
    key_matches, now_unix, read_certs, read_key, rfc3339, service_uri,
};

const DIR_MODE: u32 = 0o700;
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// The dev CA backend. Cheap to clone; holds only configuration (state is on disk).
#[derive(Debug, Clone)]
pub struct DevCa {
    config: PkiConfig,
}

/// What `iac ca show` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaInfo {
    /// The CA certificate's subject, e.g. `CN=iac dev CA`.
    pub subject: String,
    /// `sha256:<hex>` of the CA certificate's DER.
    pub fingerprint_sha256: String,
    /// Start of validity: RFC 3339 UTC.
    pub not_before: String,
    /// End of validity: RFC 3339 UTC.
    pub not_after: String,
    /// Where the CA certificate (PEM) is.
    pub cert_path: PathBuf,
    /// Where the CA private key (PEM) is.
    pub key_path: PathBuf,
    /// Certificates in `ca.pem` (more than one when it is a bundle).
    pub bundle_len: usize,
    /// Managed by iac (created/rotatable) or pointed at by `ca_cert`.
    pub managed: bool,
    /// The CA kept by the last rotation, if any.
    pub previous: Option<PreviousCa>,
}

/// The CA a rotation replaced (`ca.pem.prev` / `ca.key.prev`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreviousCa {
    /// Its subject.
    pub subject: String,
    /// `sha256:<hex>` of its certificate's DER.
    pub fingerprint_sha256: String,
    /// End of its validity: RFC 3339 UTC.
    pub not_after: String,
    /// Where its certificate is kept (`ca.pem.prev`).
    pub cert_path: PathBuf,
}

impl std::fmt::Display for CaInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "subject:     {}", self.subject)?;
        writeln!(f, "fingerprint: {}", self.fingerprint_sha256)?;
        writeln!(f, "valid:       {} .. {}", self.not_before, self.not_after)?;
        writeln!(f, "certificate: {}", self.cert_path.display())?;
        writeln!(f, "key:         {}", self.key_path.display())?;
        if self.bundle_len > 1 {
            writeln!(f, "bundle:      {} certificates", self.bundle_len)?;
        }
        writeln!(
            f,
            "managed:     {}",
            if self.managed {
                "yes (iac dev CA)"
            } else {
                "no (external CA via ca_cert)"
            }
        )?;
        if let Some(p) = &self.previous {
            writeln!(
                f,
                "previous:    {} {} (until {}) at {}",
                p.subject,
                p.fingerprint_sha256,
                p.not_after,
                p.cert_path.display()
            )?;
        }
        Ok(())
    }
}

/// Result of [`DevCa::init`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InitOutcome {
    /// False when a CA already existed and was left untouched.
    pub created: bool,
    /// The CA as it is now.
    pub ca: CaInfo,
}

/// The CA as loaded from disk, verified.
struct LoadedCa {
    pem: Vec<u8>,
    issuer_cert: CertSummary,
    key: KeyPair,
}

impl LoadedCa {
    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_der(&self.issuer_cert.der.clone().into(), &self.key).map_err(|e| {
            PkiError::Generate(format!("cannot use the CA certificate as an issuer: {e}"))
        })
    }
}

/// The subjectAltNames a leaf must carry (see the [module docs](super) for who checks which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafNames {
    /// DNS SANs (hostname verification).
    pub dns: Vec<String>,
    /// URI SANs (the SPIFFE identity the sidecars' RBAC matches).
    pub uri: Vec<String>,
}

impl LeafNames {
    /// A service leaf: DNS `<svc>` and `<svc>.<project>`, URI `spiffe://iac/<project>/<svc>`.
    pub fn service(project: &ProjectName, service: &ServiceName) -> LeafNames {
        LeafNames {
            dns: vec![service.to_string(), format!("{service}.{project}")],
            uri: vec![service_uri(project.as_str(), service.as_str())],
        }
    }

    /// The control-plane client certificate: DNS `iac-control-plane`, URI
    /// `spiffe://iac/control-plane`.
    pub fn control_plane() -> LeafNames {
        LeafNames {
            dns: vec![CONTROL_PLANE_NAME.to_string()],
            uri: vec![CONTROL_PLANE_URI.to_string()],
        }
    }
}

/// Why a leaf is (re)issued; logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafState {
    /// The leaf on disk is good for this deploy.
    Valid,
    /// The leaf must be issued again, for this reason (missing, expiring, names changed, CA rotated…).
    Reissue(String),
}

impl DevCa {
    /// A development CA with the given `[pki]` settings; nothing is read or written yet.
    pub fn new(config: PkiConfig) -> DevCa {
        DevCa { config }
    }

    /// The `[pki]` settings it was made with.
    pub fn config(&self) -> &PkiConfig {
        &self.config
    }

    /// Whether iac owns the CA files (no `ca_cert` override).
    pub fn managed(&self) -> bool {
        self.config.ca_cert.is_none()
    }

    /// The CA certificate's path: `ca_cert`, else `ca.pem` in the secrets directory.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.config
            .ca_cert
            .clone()
            .unwrap_or_else(|| self.config.secrets_dir.join("ca.pem"))
    }

    /// The CA key's path: `ca_key`, else `ca.key` in the secrets directory.
    pub fn ca_key_path(&self) -> PathBuf {
        self.config
            .ca_key
            .clone()
            .unwrap_or_else(|| self.config.secrets_dir.join("ca.key"))
    }

    fn prev_paths(&self) -> (PathBuf, PathBuf) {
        (
            with_suffix(&self.ca_cert_path(), ".prev"),
            with_suffix(&self.ca_key_path(), ".prev"),
        )
    }

    /// Host paths of a service's leaf (whether or not it exists yet).
    pub fn leaf_paths(&self, project: &ProjectName, service: &ServiceName) -> CertPaths {
        let dir = self.config.secrets_dir.join(project.as_str());
        CertPaths {
            ca: self.ca_cert_path(),
            cert: dir.join(format!("{service}.pem")),
            key: dir.join(format!("{service}.key")),
        }
    }

    /// Host paths of the control-plane client identity.
    pub fn control_plane_paths(&self) -> CertPaths {
        CertPaths {
            ca: self.ca_cert_path(),
            cert: self
                .config
                .secrets_dir
                .join(format!("{CONTROL_PLANE_NAME}.pem")),
            key: self
                .config
                .secrets_dir
                .join(format!("{CONTROL_PLANE_NAME}.key")),
        }
    }

    /// `iac ca init`: creates the CA when there is none; never touches an existing one.
    pub fn init(&self) -> Result<InitOutcome, PkiError> {
        let _lock = self.lock()?;
        let created = self.ensure_ca()?;
        Ok(InitOutcome {
            created,
            ca: self.info()?,
        })
    }

    /// `iac ca show`: the current CA (and the previous one, if a rotation kept it).
    pub fn show(&self) -> Result<CaInfo, PkiError> {
        let _lock = self.lock()?;
        self.info()
    }

    /// `iac ca rotate`: a new CA; the old one is kept as `ca.pem.prev` / `ca.key.prev` (replacing
    /// an older `.prev`). Every leaf signed by the old CA is reissued on its next issue.
    pub fn rotate(&self) -> Result<CaInfo, PkiError> {
        if !self.managed() {
            return Err(PkiError::Refused(format!(
                "the CA {} is managed outside iac (pki.ca_cert is set); rotate it with your PKI and reissue",
                self.ca_cert_path().display()
            )));
        }
        let _lock = self.lock()?;
        let (cert_path, key_path) = (self.ca_cert_path(), self.ca_key_path());
        if !cert_path.exists() {
            return Err(PkiError::Refused(format!(
                "no CA at {} to rotate; run `iac ca init` first",
                cert_path.display()
            )));
        }
        let old = self.load_ca()?;
        let old_key = std::fs::read(&key_path).map_err(io(&key_path))?;
        let (prev_cert, prev_key) = self.prev_paths();
        write_atomic(&prev_key, &old_key, Some(KEY_MODE)).map_err(io(&prev_key))?;
        write_atomic(&prev_cert, &old.pem, Some(CERT_MODE)).map_err(io(&prev_cert))?;
        self.create_ca()?;
        tracing::info!(previous = %old.issuer_cert.fingerprint, "rotated the dev CA; leaves are reissued on next use");
        self.info()
    }

    /// Issues (or reuses) the leaf of `service` in `project`. Blocking; see [`Pki::issue`].
    pub fn issue_blocking(
        &self,
        project: &ProjectName,
        service: &ServiceName,
    ) -> Result<IssuedCerts, PkiError> {
        let _lock = self.lock()?;
        self.ensure_ca()?;
        let ca = self.load_ca()?;
        let paths = self.leaf_paths(project, service);
        let names = LeafNames::service(project, service);
        ensure_dir(&self.config.secrets_dir.join(project.as_str()))?;
        self.ensure_leaf(&ca, &paths, service.as_str(), &names, true)
    }

    /// The control-plane client identity, issued or reused. Blocking; see [`Pki::client_identity`].
    pub fn client_identity_blocking(&self) -> Result<IssuedCerts, PkiError> {
        let _lock = self.lock()?;
        self.ensure_ca()?;
        let ca = self.load_ca()?;
        let paths = self.control_plane_paths();
        self.ensure_leaf(
            &ca,
            &paths,
            CONTROL_PLANE_NAME,
            &LeafNames::control_plane(),
            false,
        )
    }

    /// Whether the leaf at `paths` can be reused under the current CA, and if not why.
    pub fn leaf_state(
        &self,
        paths: &CertPaths,
        names: &LeafNames,
        server: bool,
    ) -> Result<LeafState, PkiError> {
        let ca = self.load_ca()?;
        Ok(self.check_leaf(&ca, paths, names, server))
    }

    fn ensure_leaf(
        &self,
        ca: &LoadedCa,
        paths: &CertPaths,
        common_name: &str,
        names: &LeafNames,
        server: bool,
    ) -> Result<IssuedCerts, PkiError> {
        match self.check_leaf(ca, paths, names, server) {
            LeafState::Valid => {}
            LeafState::Reissue(why) => {
                tracing::info!(cert = %paths.cert.display(), reason = %why, "issuing certificate");
                self.write_leaf(ca, paths, common_name, names, server)?;
            }
        }
        let cert = std::fs::read(&paths.cert).map_err(io(&paths.cert))?;
        let key = std::fs::read(&paths.key).map_err(io(&paths.key))?;
        Ok(IssuedCerts {
            paths: paths.clone(),
            fingerprint: identity_fingerprint(&ca.pem, &cert, &key),
        })
    }

    fn check_leaf(
        &self,
        ca: &LoadedCa,
        paths: &CertPaths,
        names: &LeafNames,
        server: bool,
    ) -> LeafState {
        if !paths.cert.exists() {
            return LeafState::Reissue(format!("{} is missing", paths.cert.display()));
        }
        if !paths.key.exists() {
            return LeafState::Reissue(format!("{} is missing", paths.key.display()));
        }
        let leaf = match read_certs(&paths.cert) {
            Ok((_, mut certs)) => certs.remove(0),
            Err(e) => return LeafState::Reissue(format!("unreadable: {e}")),
        };
        let key = match read_key(&paths.key) {
            Ok((_, k)) => k,
            Err(e) => return LeafState::Reissue(format!("unreadable: {e}")),
        };
        if !key_matches(&key, &leaf) {
            return LeafState::Reissue(format!(
                "{} is not the key of {}",
                paths.key.display(),
                paths.cert.display()
            ));
        }
        if let Err(why) = leaf.verify_signed_by(&ca.issuer_cert) {
            return LeafState::Reissue(why);
        }
        if let Some(missing) = names.dns.iter().find(|n| !leaf.dns_names.contains(n)) {
            return LeafState::Reissue(format!(
                "DNS SAN {missing:?} missing (has {:?})",
                leaf.dns_names
            ));
        }
        if let Some(missing) = names.uri.iter().find(|n| !leaf.uri_names.contains(n)) {
            return LeafState::Reissue(format!(
                "URI SAN {missing:?} missing (has {:?})",
                leaf.uri_names
            ));
        }
        if !leaf.client_auth || (server && !leaf.server_auth) {
            return LeafState::Reissue("extended key usage lacks clientAuth/serverAuth".into());
        }
        let now = now_unix();
        let window = i64::try_from(self.config.renew_before.as_secs()).unwrap_or(i64::MAX);
        if leaf.remaining(now) <= window {
            return LeafState::Reissue(format!(
                "expires {} (renewal window {})",
                rfc3339(leaf.not_after),
                iac_core::duration::format(self.config.renew_before)
            ));
        }
        if leaf.not_before > now + 300 {
            return LeafState::Reissue(format!("not valid before {}", rfc3339(leaf.not_before)));
        }
        LeafState::Valid
    }

    fn write_leaf(
        &self,
        ca: &LoadedCa,
        paths: &CertPaths,
        common_name: &str,
        names: &LeafNames,
        server: bool,
    ) -> Result<(), PkiError> {
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "iac");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        let dns = names.dns.iter().map(|n| {
            n.clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e| PkiError::Generate(format!("invalid DNS name {n:?}: {e}")))
        });
        let uri = names.uri.iter().map(|n| {
            n.clone()
                .try_into()
                .map(SanType::URI)
                .map_err(|e| PkiError::Generate(format!("invalid URI {n:?}: {e}")))
        });
        params.subject_alt_names = dns.chain(uri).collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + validity(self.config.leaf_validity);
        let ca_not_after =
            OffsetDateTime::from_unix_timestamp(ca.issuer_cert.not_after).map_err(gen_err)?;
        if params.not_after > ca_not_after {
            params.not_after = ca_not_after;
        }
        let cert = params.signed_by(&key, &ca.issuer()?).map_err(gen_err)?;
        // Key first: a crash in between leaves a key without its cert, which the next issue
        // detects (key does not match) and replaces.
        write_atomic(&paths.key, key.serialize_pem().as_bytes(), Some(KEY_MODE))
            .map_err(io(&paths.key))?;
        write_atomic(&paths.cert, cert.pem().as_bytes(), Some(CERT_MODE))
            .map_err(io(&paths.cert))?;
        Ok(())
    }

    /// Creates the CA if `ca.pem` is missing. Returns whether it did.
    fn ensure_ca(&self) -> Result<bool, PkiError> {
        let (cert_path, key_path) = (self.ca_cert_path(), self.ca_key_path());
        if cert_path.exists() {
            if !key_path.exists() {
                return Err(PkiError::Invalid {
                    path: key_path,
                    why: format!(
                        "missing, but the CA certificate {} exists; restore the key",
                        cert_path.display()
                    ),
                });
            }
            return Ok(false);
        }
        if !self.managed() {
            return Err(PkiError::Invalid {
                path: cert_path,
                why: "pki.ca_cert points here but the file does not exist".into(),
            });
        }
        if key_path.exists() {
            return Err(PkiError::Refused(format!(
                "{} exists without {}; refusing to overwrite a CA key (restore ca.pem, or remove the key to start a new CA)",
                key_path.display(),
                cert_path.display()
            )));
        }
        self.create_ca()?;
        Ok(true)
    }

    fn create_ca(&self) -> Result<(), PkiError> {
        let (cert_path, key_path) = (self.ca_cert_path(), self.ca_key_path());
        ensure_dir(&self.config.secrets_dir)?;
        let key = KeyPair::generate().map_err(gen_err)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "iac");
        let stamp = now
            .format(&time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .map_err(gen_err)?;
        dn.push(
            DnType::CommonName,
            format!("{} {stamp}", self.config.ca_common_name),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - Duration::hours(1);
        params.not_after = now + validity(self.config.ca_validity);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        write_atomic(&key_path, key.serialize_pem().as_bytes(), Some(KEY_MODE))
            .map_err(io(&key_path))?;
        write_atomic(&cert_path, cert.pem().as_bytes(), Some(CERT_MODE)).map_err(io(&cert_path))?;
        tracing::info!(cert = %cert_path.display(), "created a dev CA");
        Ok(())
    }

    fn load_ca(&self) -> Result<LoadedCa, PkiError> {
        let (cert_path, key_path) = (self.ca_cert_path(), self.ca_key_path());
        let (pem, certs) = read_certs(&cert_path)?;
        let issuer_cert = certs
            .into_iter()
            .next()
            .expect("read_certs returns at least one");
        if !issuer_cert.is_ca {
            return Err(PkiError::Invalid {
                path: cert_path,
                why: "the first certificate is not a CA (basicConstraints CA:TRUE expected)".into(),
            });
        }
        let (_, key) = read_key(&key_path)?;
        if !key_matches(&key, &issuer_cert) {
            return Err(PkiError::Invalid {
                path: key_path,
                why: format!(
                    "is not the key of the CA certificate {}",
                    cert_path.display()
                ),
            });
        }
        if issuer_cert.not_after <= now_unix() {
            return Err(PkiError::Invalid {
                path: cert_path,
                why: format!(
                    "the CA expired {}; run `iac ca rotate`",
                    rfc3339(issuer_cert.not_after)
                ),
            });
        }
        Ok(LoadedCa {
            pem,
            issuer_cert,
            key,
        })
    }

    fn info(&self) -> Result<CaInfo, PkiError> {
        let cert_path = self.ca_cert_path();
        if !cert_path.exists() {
            return Err(PkiError::Invalid {
                path: cert_path,
                why: "no CA yet; run `iac ca init`".into(),
            });
        }
        let ca = self.load_ca()?;
        let (_, bundle) = read_certs(&cert_path)?;
        let (prev_cert, _) = self.prev_paths();
        let previous = if prev_cert.exists() {
            let (_, prev) = read_certs(&prev_cert)?;
            let p = &prev[0];
            Some(PreviousCa {
                subject: p.subject.clone(),
                fingerprint_sha256: p.fingerprint.clone(),
                not_after: rfc3339(p.not_after),
                cert_path: prev_cert,
            })
        } else {
            None
        };
        Ok(CaInfo {
            subject: ca.issuer_cert.subject.clone(),
            fingerprint_sha256: ca.issuer_cert.fingerprint.clone(),
            not_before: rfc3339(ca.issuer_cert.not_before),
            not_after: rfc3339(ca.issuer_cert.not_after),
            cert_path,
            key_path: self.ca_key_path(),
            bundle_len: bundle.len(),
            managed: self.managed(),
            previous,
        })
    }

    /// Exclusive lock on `<secrets>/.pki.lock`, released on drop.
    fn lock(&self) -> Result<FileLock, PkiError> {
        ensure_dir(&self.config.secrets_dir)?;
        let path = self.config.secrets_dir.join(".pki.lock");
        FileLock::acquire_blocking(&path).map_err(io(&path))
    }
}

#[async_trait]
impl Pki for DevCa {
    async fn issue(
        &self,
        project: &ProjectName,
        service: &ServiceName,
    ) -> Result<IssuedCerts, PkiError> {
        let (me, project, service) = (self.clone(), project.clone(), service.clone());
        tokio::task::spawn_blocking(move || me.issue_blocking(&project, &service))
            .await
            .map_err(|e| PkiError::Generate(format!("issuing task failed: {e}")))?
    }

    async fn client_identity(&self) -> Result<IssuedCerts, PkiError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.client_identity_blocking())
            .await
            .map_err(|e| PkiError::Generate(format!("issuing task failed: {e}")))?
    }
}

/// Creates `dir` (and parents) and makes it 0700. Tightens an existing directory that is
/// group- or world-accessible.
fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
            .map_err(io(dir))?;
    }
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn gen_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Generate(e.to_string())
}

/// A configured validity as a certificate lifetime: at least one second, at most ~100 years.
fn validity(d: std::time::Duration) -> Duration {
    let secs = d.as_secs().clamp(1, 100 * 366 * 86_400);
    Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX))
}
