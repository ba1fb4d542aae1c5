//! Fuzz target: the slug parser never panics, and whatever parses prints back to a string that
//! parses to the same slug.
#![no_main]

use iac_core::Slug;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(slug) = text.parse::<Slug>() {
        let printed = slug.to_string();
        let again: Slug = printed.parse().unwrap_or_else(|e| {
            panic!("{text:?} parsed, but its display {printed:?} does not: {e}")
        });
        assert_eq!(again, slug, "round trip of {text:?}");
    }
});
