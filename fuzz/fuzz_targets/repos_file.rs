//! Fuzz target: the repos-file parser (YAML, JSON and auto-detection) never panics, and every
//! accepted file has unique, valid service names.
#![no_main]

use iac_core::{ReposFormat, parse_repos_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for format in [ReposFormat::Yaml, ReposFormat::Json, ReposFormat::Auto] {
        if let Ok(file) = parse_repos_file(text, format) {
            let mut names: Vec<&str> = file.services.iter().map(|s| s.name.as_str()).collect();
            let n = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(
                names.len(),
                n,
                "duplicate service names accepted from {text:?}"
            );
        }
    }
});
