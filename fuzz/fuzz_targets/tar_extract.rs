//! Fuzz target: safe tar extraction. Whatever the bytes, extraction never panics, never writes
//! outside its staging directory, and respects the caps. Runs on plain tar (gzip's checksum would
//! hide most inputs from the tar parser) with small caps so every run is cheap.
#![no_main]

use iac_backends::fetch::extract::{Limits, extract_tar};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_bytes: 64 * 1024,
    max_files: 64,
};

fuzz_target!(|data: &[u8]| {
    let parent = tempfile::tempdir().expect("temp dir");
    let staging = parent.path().join("staging");
    std::fs::create_dir(&staging).expect("staging dir");
    let result = extract_tar(data, &staging, LIMITS, "fuzz.tar");
    let outside: Vec<_> = std::fs::read_dir(parent.path())
        .expect("read parent")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| n != "staging")
        .collect();
    assert!(
        outside.is_empty(),
        "extraction wrote outside the staging dir: {outside:?}"
    );
    if let Ok(x) = result {
        assert!(
            x.root.starts_with(&staging),
            "tree root {:?} outside staging",
            x.root
        );
        assert!(
            x.files <= LIMITS.max_files && x.bytes <= LIMITS.max_bytes,
            "caps exceeded: {x:?}"
        );
    }
});
