//! Extra HTTPS trust roots of the fetchers: a PEM bundle (`[fetch] ca_bundle`, and for git also
//! the machine's `http.sslCAInfo`) loaded into reqwest certificates that are *merged* with the
//! platform's roots, for an internal Git host whose certificate a private CA signed. gix's
//! reqwest transport does not read `http.sslCAInfo` itself, so `git.rs` applies these roots to
//! every HTTP(S) ref listing and clone, and `tarball.rs` to archive downloads.

use std::path::Path;

use iac_core::FetchError;

/// The certificates of the PEM file at `path` (at least one), or an error naming the file and
/// what was expected.
pub fn load_roots(path: &Path, setting: &str) -> Result<Vec<reqwest::Certificate>, FetchError> {
    let pem = std::fs::read(path).map_err(FetchError::io(path))?;
    let bad = |why: String| FetchError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!(
            "{setting}: {why}; expected a PEM file of CA certificates (-----BEGIN CERTIFICATE-----)"
        )),
    };
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = load_roots(&p, "[fetch] ca_bundle").unwrap_err().to_string();
        assert!(
            e.contains("ca.pem") && e.contains("[fetch] ca_bundle") && e.contains("PEM"),
            "{e}"
        );
        let missing = load_roots(&dir.path().join("nope.pem"), "[fetch] ca_bundle")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope.pem"), "{missing}");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ca.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&p, cert.pem()).unwrap();
        assert_eq!(load_roots(&p, "[fetch] ca_bundle").unwrap().len(), 1);
    }
}
