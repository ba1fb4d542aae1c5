//! Fuzz target: safe tar extraction. Whatever the bytes, extraction never panics, never writes
//! outside its staging directory (neither beside it nor into the `victim` directory next to it,
//! which link targets such as `../../victim` aim at), and respects the caps. Runs on plain tar
//! (gzip's checksum would hide most inputs from the tar parser) with small caps so every run is
//! cheap.
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
    let victim = parent.path().join("victim");
    std::fs::create_dir(&victim).expect("victim dir");
    let result = extract_tar(data, &staging, LIMITS, "fuzz.tar");
    let outside: Vec<_> = std::fs::read_dir(parent.path())
        .expect("read parent")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| n != "staging" && n != "victim")
        .collect();
    assert!(
        outside.is_empty(),
        "extraction wrote outside the staging dir: {outside:?}"
    );
    let landed: Vec<_> = std::fs::read_dir(&victim)
        .expect("read victim")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert!(
        landed.is_empty(),
        "extraction created entries in the victim dir beside staging: {landed:?}"
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
