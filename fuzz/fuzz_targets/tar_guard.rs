//! Fuzz target: the tar header guard (`iac_backends::fetch::tar_guard::TarGuard`). Whatever the
//! bytes and however they are split into reads, the guard never panics and is transparent: what
//! it passes is exactly a prefix of its input (the whole input when it raises no error), and an
//! error it raises that is a `HeaderTooLarge` names at most `NAME_SHOWN` characters of the entry. And what it lets
//! through whole never gives the `tar` crate a path or link name longer than a pax header may
//! carry — the memory the guard exists to bound.
#![no_main]

use std::io::Read;

use iac_backends::fetch::tar_guard::{HeaderTooLarge, MAX_PAX_HEADER, NAME_SHOWN, TarGuard};
use libfuzzer_sys::fuzz_target;

/// A reader that hands out at most `step` bytes per call (1..=64), as a decompressor may.
struct Chunked<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, tar)) = data.split_first() else {
        return;
    };
    let step = usize::from(first % 64) + 1;
    let mut guard = TarGuard::new(Chunked { data: tar, step });
    let mut out = Vec::new();
    let mut buf = [0u8; 700];
    let verdict = loop {
        match guard.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
    };
    assert!(tar.starts_with(&out), "the guard changed the bytes it passed");
    match verdict {
        Ok(()) => {
            assert_eq!(out.len(), tar.len(), "the guard dropped bytes without an error");
            // Whatever the tar crate makes of an accepted stream, its names stay bounded.
            let mut archive = tar::Archive::new(&out[..]);
            if let Ok(entries) = archive.entries() {
                for entry in entries.take(256) {
                    let Ok(entry) = entry else { break };
                    let path = entry.path_bytes().len();
                    assert!(path as u64 <= MAX_PAX_HEADER, "a {path}-byte path got through");
                    if let Some(link) = entry.link_name_bytes() {
                        assert!(link.len() as u64 <= MAX_PAX_HEADER, "a long link got through");
                    }
                }
            }
        }
        Err(e) => {
            let refusal = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<HeaderTooLarge>());
            if let Some(r) = refusal {
                assert!(r.size > r.cap, "refused {} bytes under the cap {}", r.size, r.cap);
                // At most NAME_SHOWN characters of the name, plus the mark of a cut one.
                let shown = r.entry.strip_suffix("…(cut)").unwrap_or(&r.entry);
                assert!(
                    shown.chars().count() <= NAME_SHOWN,
                    "the refusal shows {} characters of the name",
                    shown.chars().count()
                );
            }
        }
    }
});
