//! Dev CA and external-certificate PKI against a real filesystem: permissions, atomic
//! replacement, reuse vs reissue (missing, expiring, expired, unparseable, wrong key, other CA,
//! rotation), SANs and key usages parsed back from the certificates, `init` never overwriting,
//! `rotate` keeping the previous CA, parallel issues, and the external per-service mode.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use iac_backends::pki::{
    CertSummary, DevCa, ExternalCertsConfig, ExternalPki, LeafNames, PkiConfig, from_config,
    parse_pem_certs, read_certs,
};
use iac_core::{Pki, ProjectName, ServiceName};

fn svc(s: &str) -> ServiceName {
    ServiceName::new(s).unwrap()
}

fn proj() -> ProjectName {
    ProjectName::new("shop").unwrap()
}

fn ca_in(dir: &Path) -> DevCa {
    DevCa::new(PkiConfig {
        secrets_dir: dir.to_path_buf(),
        ..PkiConfig::default()
    })
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn leaf(p: &Path) -> CertSummary {
    read_certs(p).unwrap().1.remove(0)
}

fn ca_cert(ca: &DevCa) -> CertSummary {
    leaf(&ca.ca_cert_path())
}

/// No `.tmp-` files anywhere below `dir`.
fn assert_no_temp_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(".tmp-"),
            "leftover temp file {}",
            entry.path().display()
        );
        if entry.file_type().unwrap().is_dir() {
            assert_no_temp_files(&entry.path());
        }
    }
}

#[test]
fn init_creates_with_tight_permissions_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("secrets");
    let ca = ca_in(&dir);
    let out = ca.init().unwrap();
    assert!(out.created);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    assert_eq!(mode(&dir.join("ca.pem")), 0o644);
    let cert = ca_cert(&ca);
    assert!(cert.is_ca);
    assert_eq!(out.ca.subject, cert.subject);
    assert!(cert.subject.contains("iac dev CA"), "{}", cert.subject);
    assert_eq!(
        out.ca.fingerprint_sha256,
        iac_core::fsutil::sha256_tagged(&cert.der)
    );
    assert!(out.ca.managed);
    // ~10 years by default.
    assert!((cert.not_after - cert.not_before) > 3649 * 86_400);

    let (pem, key) = (
        std::fs::read(dir.join("ca.pem")).unwrap(),
        std::fs::read(dir.join("ca.key")).unwrap(),
    );
    let again = ca.init().unwrap();
    assert!(!again.created, "an existing CA is left alone");
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), pem);
    assert_eq!(std::fs::read(dir.join("ca.key")).unwrap(), key);
    assert_eq!(
        ca.show().unwrap().fingerprint_sha256,
        out.ca.fingerprint_sha256
    );
    let shown = ca.show().unwrap().to_string();
    assert!(
        shown.contains(&out.ca.fingerprint_sha256) && shown.contains("ca.pem"),
        "{shown}"
    );

    // A key without its certificate is never overwritten.
    std::fs::remove_file(dir.join("ca.pem")).unwrap();
    let err = ca.init().unwrap_err().to_string();
    assert!(err.contains("ca.key") && err.contains("refusing"), "{err}");
    assert_eq!(std::fs::read(dir.join("ca.key")).unwrap(), key);
    // A certificate without its key is an error too.
    std::fs::write(dir.join("ca.pem"), &pem).unwrap();
    std::fs::remove_file(dir.join("ca.key")).unwrap();
    let err = ca.init().unwrap_err().to_string();
    assert!(err.contains("ca.key") && err.contains("missing"), "{err}");
}

#[test]
fn show_without_a_ca_says_how_to_make_one() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ca_in(tmp.path()).show().unwrap_err().to_string();
    assert!(err.contains("iac ca init"), "{err}");
}

#[test]
fn loose_secrets_dir_is_tightened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("secrets");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    ca_in(&dir).init().unwrap();
    assert_eq!(mode(&dir), 0o700);
}

#[tokio::test]
async fn leaf_has_sans_usages_and_is_signed_by_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca_in(tmp.path());
    let issued = ca.issue(&proj(), &svc("api")).await.unwrap();
    assert_eq!(issued.paths.cert, tmp.path().join("shop/api.pem"));
    assert_eq!(issued.paths.key, tmp.path().join("shop/api.key"));
    assert_eq!(issued.paths.ca, tmp.path().join("ca.pem"));
    assert_eq!(mode(&issued.paths.key), 0o600);
    assert_eq!(mode(&tmp.path().join("shop")), 0o700);
    let cert = leaf(&issued.paths.cert);
    assert_eq!(cert.dns_names, ["api", "api.shop"]);
    assert_eq!(cert.uri_names, ["spiffe://iac/shop/api"]);
    assert!(cert.server_auth && cert.client_auth);
    assert!(!cert.is_ca);
    assert!(cert.subject.contains("CN=api"), "{}", cert.subject);
    cert.verify_signed_by(&ca_cert(&ca)).unwrap();
    let days = (cert.not_after - cert.not_before) / 86_400;
    assert!((90..=91).contains(&days), "leaf valid {days} days");

    let cp = ca.client_identity().await.unwrap();
    assert_eq!(cp.paths.cert, tmp.path().join("iac-control-plane.pem"));
    assert_eq!(mode(&cp.paths.key), 0o600);
    let cpc = leaf(&cp.paths.cert);
    assert_eq!(cpc.dns_names, ["iac-control-plane"]);
    assert_eq!(cpc.uri_names, ["spiffe://iac/control-plane"]);
    assert!(cpc.subject.contains("CN=iac-control-plane"));
    assert!(
        cpc.client_auth && !cpc.server_auth,
        "control plane is a client only"
    );
    cpc.verify_signed_by(&ca_cert(&ca)).unwrap();

    // A different CA's certificate does not verify.
    let other = tempfile::tempdir().unwrap();
    let other_ca = ca_in(other.path());
    other_ca.init().unwrap();
    assert!(cert.verify_signed_by(&ca_cert(&other_ca)).is_err());
}

#[tokio::test]
async fn valid_leaf_is_reused_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca_in(tmp.path());
    let first = ca.issue(&proj(), &svc("api")).await.unwrap();
    let bytes = std::fs::read(&first.paths.cert).unwrap();
    let ino = std::fs::metadata(&first.paths.cert).unwrap().ino();
    let second = ca.issue(&proj(), &svc("api")).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(std::fs::read(&second.paths.cert).unwrap(), bytes);
    assert_eq!(
        std::fs::metadata(&second.paths.cert).unwrap().ino(),
        ino,
        "not rewritten"
    );
    // Another service gets its own, different identity.
    let web = ca.issue(&proj(), &svc("web")).await.unwrap();
    assert_ne!(web.fingerprint, first.fingerprint);
}

#[tokio::test]
async fn reissue_when_expiring_within_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let short = DevCa::new(PkiConfig {
        secrets_dir: tmp.path().to_path_buf(),
        leaf_validity: std::time::Duration::from_secs(86_400),
        renew_before: std::time::Duration::ZERO,
        ..PkiConfig::default()
    });
    let first = short.issue(&proj(), &svc("api")).await.unwrap();
    let c = leaf(&first.paths.cert);
    assert!(
        c.not_after - c.not_before <= 86_400 + 3600,
        "a one-day leaf"
    );
    assert_eq!(
        short.issue(&proj(), &svc("api")).await.unwrap(),
        first,
        "still outside a 0-day window"
    );

    // The same files seen with a 2-day renewal window: the 1-day leaf is renewed.
    let strict = DevCa::new(PkiConfig {
        secrets_dir: tmp.path().to_path_buf(),
        leaf_validity: std::time::Duration::from_secs(30 * 86_400),
        renew_before: std::time::Duration::from_secs(2 * 86_400),
        ..PkiConfig::default()
    });
    let renewed = strict.issue(&proj(), &svc("api")).await.unwrap();
    assert_ne!(renewed.fingerprint, first.fingerprint);
    let c2 = leaf(&renewed.paths.cert);
    assert!(c2.not_after - c2.not_before >= 30 * 86_400);
}

#[tokio::test]
async fn reissue_when_expired() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca_in(tmp.path());
    let first = ca.issue(&proj(), &svc("api")).await.unwrap();

    // Replace the leaf with one the same CA signed but which expired yesterday (same key).
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca.ca_key_path()).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(ca.ca_cert_path()).unwrap(),
        &ca_key,
    )
    .unwrap();
    let leaf_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(&first.paths.key).unwrap()).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["api".to_string(), "api.shop".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://iac/shop/api".try_into().unwrap(),
    ));
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(10);
    params.not_after = now - time::Duration::days(1);
    let expired = params.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(&first.paths.cert, expired.pem()).unwrap();
    let e = leaf(&first.paths.cert);
    e.verify_signed_by(&ca_cert(&ca)).unwrap();
    assert!(e.not_after < now.unix_timestamp());
    match ca
        .leaf_state(
            &first.paths,
            &LeafNames::service(&proj(), &svc("api")),
            true,
        )
        .unwrap()
    {
        iac_backends::pki::dev_ca::LeafState::Reissue(why) => {
            assert!(why.contains("expires"), "{why}")
        }
        other => panic!("expected a reissue, got {other:?}"),
    }

    let again = ca.issue(&proj(), &svc("api")).await.unwrap();
    let fresh = leaf(&again.paths.cert);
    assert!(fresh.not_after > now.unix_timestamp() + 80 * 86_400);
    assert_ne!(again.fingerprint, first.fingerprint);
}

#[tokio::test]
async fn reissue_when_unparseable_missing_or_key_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca_in(tmp.path());
    let first = ca.issue(&proj(), &svc("api")).await.unwrap();

    std::fs::write(
        &first.paths.cert,
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let a = ca.issue(&proj(), &svc("api")).await.unwrap();
    leaf(&a.paths.cert).verify_signed_by(&ca_cert(&ca)).unwrap();

    // Key of another service: mismatch → reissue.
    let web = ca.issue(&proj(), &svc("web")).await.unwrap();
    std::fs::copy(&web.paths.key, &a.paths.key).unwrap();
    let b = ca.issue(&proj(), &svc("api")).await.unwrap();
    assert_ne!(b.fingerprint, a.fingerprint);
    let cert = leaf(&b.paths.cert);
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&b.paths.key).unwrap()).unwrap();
    assert!(iac_backends::pki::key_matches(&key, &cert));

    std::fs::remove_file(&b.paths.key).unwrap();
    let c = ca.issue(&proj(), &svc("api")).await.unwrap();
    assert!(c.paths.key.exists());
    assert_ne!(c.fingerprint, b.fingerprint);
}

#[tokio::test]
async fn rotate_keeps_the_previous_ca_and_leaves_follow() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca_in(tmp.path());
    let before_api = ca.issue(&proj(), &svc("api")).await.unwrap();
    let before_cp = ca.client_identity().await.unwrap();
    let old_pem = std::fs::read(ca.ca_cert_path()).unwrap();
    let old_key = std::fs::read(ca.ca_key_path()).unwrap();
    let old_fp = ca.show().unwrap().fingerprint_sha256;

    let info = ca.rotate().unwrap();
    assert_ne!(info.fingerprint_sha256, old_fp);
    let prev = info.previous.as_ref().expect("previous CA reported");
    assert_eq!(prev.fingerprint_sha256, old_fp);
    assert_eq!(
        std::fs::read(tmp.path().join("ca.pem.prev")).unwrap(),
        old_pem
    );
    assert_eq!(
        std::fs::read(tmp.path().join("ca.key.prev")).unwrap(),
        old_key
    );
    assert_eq!(mode(&tmp.path().join("ca.key.prev")), 0o600);
    assert_eq!(mode(&tmp.path().join("ca.key")), 0o600);
    assert_ne!(std::fs::read(ca.ca_key_path()).unwrap(), old_key);

    // The old leaf no longer verifies against the new CA, so the next issue replaces it.
    let new_ca = ca_cert(&ca);
    assert!(
        leaf(&before_api.paths.cert)
            .verify_signed_by(&new_ca)
            .is_err()
    );
    let after_api = ca.issue(&proj(), &svc("api")).await.unwrap();
    assert_ne!(after_api.fingerprint, before_api.fingerprint);
    leaf(&after_api.paths.cert)
        .verify_signed_by(&new_ca)
        .unwrap();
    let after_cp = ca.client_identity().await.unwrap();
    assert_ne!(after_cp.fingerprint, before_cp.fingerprint);
    leaf(&after_cp.paths.cert)
        .verify_signed_by(&new_ca)
        .unwrap();
    assert!(ca.show().unwrap().to_string().contains("previous"));
    assert_no_temp_files(tmp.path());
}

#[tokio::test]
async fn reissue_when_the_ca_was_replaced_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca_in(tmp.path());
    let first = ca.issue(&proj(), &svc("api")).await.unwrap();
    std::fs::remove_file(ca.ca_cert_path()).unwrap();
    std::fs::remove_file(ca.ca_key_path()).unwrap();
    assert!(ca.init().unwrap().created);
    let second = ca.issue(&proj(), &svc("api")).await.unwrap();
    assert_ne!(first.fingerprint, second.fingerprint);
    leaf(&second.paths.cert)
        .verify_signed_by(&ca_cert(&ca))
        .unwrap();
}

#[tokio::test]
async fn replacement_is_atomic() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca_in(tmp.path());
    let first = ca.issue(&proj(), &svc("api")).await.unwrap();
    let old = std::fs::read(&first.paths.cert).unwrap();
    // A reader holding the old file keeps a complete old certificate; the path gets a new inode.
    let mut held = std::fs::File::open(&first.paths.cert).unwrap();
    let old_ino = held.metadata().unwrap().ino();
    ca.rotate().unwrap();
    let second = ca.issue(&proj(), &svc("api")).await.unwrap();
    let mut via_old = Vec::new();
    std::io::Read::read_to_end(&mut held, &mut via_old).unwrap();
    assert_eq!(via_old, old);
    assert_ne!(
        std::fs::metadata(&second.paths.cert).unwrap().ino(),
        old_ino
    );
    parse_pem_certs(&std::fs::read(&second.paths.cert).unwrap()).unwrap();
    assert_no_temp_files(tmp.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_issues_agree_on_one_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = std::sync::Arc::new(ca_in(tmp.path()));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let ca = ca.clone();
        tasks.push(tokio::spawn(async move {
            let name = svc(&format!("s{}", i % 4));
            ca.issue(&proj(), &name).await.unwrap()
        }));
    }
    let mut issued = Vec::new();
    for t in tasks {
        issued.push(t.await.unwrap());
    }
    let root = ca_cert(&ca);
    for i in &issued {
        leaf(&i.paths.cert).verify_signed_by(&root).unwrap();
    }
    // Same service → same identity, whichever task won.
    for i in 0..4 {
        let name = format!("s{i}.pem");
        let fps: Vec<_> = issued
            .iter()
            .filter(|x| x.paths.cert.ends_with(&name))
            .map(|x| leaf(&x.paths.cert).fingerprint)
            .collect();
        assert!(fps.windows(2).all(|w| w[0] == w[1]), "{name}: {fps:?}");
    }
    assert_no_temp_files(tmp.path());
}

#[tokio::test]
async fn existing_ca_via_config_is_used_but_never_created_or_rotated() {
    let tmp = tempfile::tempdir().unwrap();
    // "The org's CA": made elsewhere, at non-default paths.
    let org = ca_in(&tmp.path().join("org"));
    org.init().unwrap();
    let org_pem: PathBuf = tmp.path().join("org-ca.crt");
    let org_key: PathBuf = tmp.path().join("org-ca.key");
    std::fs::rename(org.ca_cert_path(), &org_pem).unwrap();
    std::fs::rename(org.ca_key_path(), &org_key).unwrap();

    let cfg = PkiConfig {
        secrets_dir: tmp.path().join("secrets"),
        ca_cert: Some(org_pem.clone()),
        ca_key: Some(org_key.clone()),
        ..PkiConfig::default()
    };
    let ca = DevCa::new(cfg.clone());
    let out = ca.init().unwrap();
    assert!(!out.created && !out.ca.managed);
    let issued = ca.issue(&proj(), &svc("api")).await.unwrap();
    assert_eq!(issued.paths.ca, org_pem);
    leaf(&issued.paths.cert)
        .verify_signed_by(&leaf(&org_pem))
        .unwrap();
    let err = ca.rotate().unwrap_err().to_string();
    assert!(err.contains("managed outside iac"), "{err}");
    assert!(!tmp.path().join("org-ca.crt.prev").exists());

    let missing = DevCa::new(PkiConfig {
        ca_cert: Some(tmp.path().join("nope.crt")),
        ..cfg
    });
    let err = missing.init().unwrap_err().to_string();
    assert!(err.contains("nope.crt"), "{err}");
    assert!(!tmp.path().join("nope.crt").exists(), "never created");
}

#[tokio::test]
async fn external_per_service_certs() {
    let tmp = tempfile::tempdir().unwrap();
    // Certificates "from your PKI": issued here by a dev CA in another directory.
    let issuer = ca_in(&tmp.path().join("pki"));
    issuer.issue(&proj(), &svc("api")).await.unwrap();
    issuer.client_identity().await.unwrap();
    let pki_dir = tmp.path().join("pki");
    let ext = ExternalCertsConfig {
        ca: pki_dir.join("ca.pem"),
        cert: format!("{}/{{project}}/{{service}}.pem", pki_dir.display()),
        key: format!("{}/{{project}}/{{service}}.key", pki_dir.display()),
        control_plane_cert: pki_dir.join("iac-control-plane.pem"),
        control_plane_key: pki_dir.join("iac-control-plane.key"),
    };
    let pki = from_config(&PkiConfig {
        external: Some(ext.clone()),
        ..PkiConfig::default()
    });
    let got = pki.issue(&proj(), &svc("api")).await.unwrap();
    assert_eq!(got.paths.cert, pki_dir.join("shop/api.pem"));
    assert_eq!(got.paths.ca, pki_dir.join("ca.pem"));
    assert_eq!(
        pki.issue(&proj(), &svc("api")).await.unwrap().fingerprint,
        got.fingerprint
    );
    let cp = pki.client_identity().await.unwrap();
    assert_eq!(cp.paths.cert, pki_dir.join("iac-control-plane.pem"));

    // Missing certificate: an error naming the file; nothing is created.
    let err = pki
        .issue(&proj(), &svc("web"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("shop/web.pem"), "{err}");
    assert!(!pki_dir.join("shop/web.pem").exists());

    // A certificate that does not name the service is refused.
    std::fs::copy(pki_dir.join("shop/api.pem"), pki_dir.join("shop/web.pem")).unwrap();
    std::fs::copy(pki_dir.join("shop/api.key"), pki_dir.join("shop/web.key")).unwrap();
    let err = pki
        .issue(&proj(), &svc("web"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"web\"") && err.contains("subjectAltName"),
        "{err}"
    );

    // A certificate from another CA is refused.
    let other = ca_in(&tmp.path().join("other"));
    let o = other.issue(&proj(), &svc("web")).await.unwrap();
    std::fs::copy(&o.paths.cert, pki_dir.join("shop/web.pem")).unwrap();
    std::fs::copy(&o.paths.key, pki_dir.join("shop/web.key")).unwrap();
    let err = pki
        .issue(&proj(), &svc("web"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not signed by the CA bundle"), "{err}");

    // A key that is not the certificate's is refused.
    std::fs::copy(pki_dir.join("shop/api.key"), pki_dir.join("shop/web.key")).unwrap();
    let err = pki
        .issue(&proj(), &svc("web"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not the key of"), "{err}");

    // A service leaf cannot stand in for the control plane: it lacks the control plane's URI SAN.
    let direct = ExternalPki::new(ext.clone());
    let leaf_paths = direct.leaf_paths(&proj(), &svc("api"));
    let err = direct
        .check(&leaf_paths, &ExternalPki::control_plane_names(), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spiffe://iac/control-plane") && err.contains("URI subjectAltName"),
        "{err}"
    );

    // A leaf with only the DNS name `<svc>` (what iac asked for before inbound RBAC) is refused,
    // naming the SAN that is missing: peers verify `<svc>.<project>`, RBAC the URI.
    let names_only = |sans: Vec<rcgen::SanType>| {
        let (issuer_pem, issuer_key) = (
            std::fs::read_to_string(pki_dir.join("ca.pem")).unwrap(),
            std::fs::read_to_string(pki_dir.join("ca.key")).unwrap(),
        );
        let ca_key = rcgen::KeyPair::from_pem(&issuer_key).unwrap();
        let ca = rcgen::Issuer::from_ca_cert_pem(&issuer_pem, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(pki_dir.join("shop/web.pem"), cert.pem()).unwrap();
        std::fs::write(pki_dir.join("shop/web.key"), key.serialize_pem()).unwrap();
    };
    let dns = |n: &str| rcgen::SanType::DnsName(n.try_into().unwrap());
    let uri = |n: &str| rcgen::SanType::URI(n.try_into().unwrap());
    names_only(vec![dns("web")]);
    let err = pki
        .issue(&proj(), &svc("web"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"web.shop\"") && err.contains("DNS subjectAltName"),
        "{err}"
    );
    names_only(vec![dns("web"), dns("web.shop")]);
    let err = pki
        .issue(&proj(), &svc("web"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spiffe://iac/shop/web") && err.contains("URI subjectAltName"),
        "{err}"
    );
    // Another project's URI is not this project's.
    names_only(vec![
        dns("web"),
        dns("web.shop"),
        uri("spiffe://iac/other/web"),
    ]);
    let err = pki
        .issue(&proj(), &svc("web"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("spiffe://iac/shop/web"), "{err}");
    names_only(vec![
        dns("web"),
        dns("web.shop"),
        uri("spiffe://iac/shop/web"),
    ]);
    pki.issue(&proj(), &svc("web")).await.unwrap();
}

/// Leaves and control-plane certificates issued before the URI SANs existed (DNS SANs only)
/// are reissued on their next use, so an upgrade never leaves a sidecar refusing its peers.
#[tokio::test]
async fn leaves_without_the_uri_san_are_reissued() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca_in(tmp.path());
    let first = ca.issue(&proj(), &svc("api")).await.unwrap();
    let cp_first = ca.client_identity().await.unwrap();
    let issuer_pem = std::fs::read_to_string(tmp.path().join("ca.pem")).unwrap();
    let issuer_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(tmp.path().join("ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&issuer_pem, issuer_key).unwrap();
    for (paths, names) in [
        (
            &first.paths,
            vec!["api".to_string(), "api.shop".to_string()],
        ),
        (&cp_first.paths, vec!["iac-control-plane".to_string()]),
    ] {
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&paths.key).unwrap()).unwrap();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        std::fs::write(&paths.cert, params.signed_by(&key, &issuer).unwrap().pem()).unwrap();
        assert!(leaf(&paths.cert).uri_names.is_empty());
    }
    match ca
        .leaf_state(
            &first.paths,
            &LeafNames::service(&proj(), &svc("api")),
            true,
        )
        .unwrap()
    {
        iac_backends::pki::dev_ca::LeafState::Reissue(why) => {
            assert!(
                why.contains("URI SAN") && why.contains("spiffe://iac/shop/api"),
                "{why}"
            )
        }
        other => panic!("expected a reissue, got {other:?}"),
    }
    let again = ca.issue(&proj(), &svc("api")).await.unwrap();
    assert_ne!(again.fingerprint, first.fingerprint);
    assert_eq!(leaf(&again.paths.cert).uri_names, ["spiffe://iac/shop/api"]);
    let cp = ca.client_identity().await.unwrap();
    assert_ne!(cp.fingerprint, cp_first.fingerprint);
    assert_eq!(
        leaf(&cp.paths.cert).uri_names,
        ["spiffe://iac/control-plane"]
    );
}
