//! Fuzz target: the requirements-file filter (`iac_backends::build::requirements::parse`) never
//! panics, and nothing it accepts points pip elsewhere: accepted index lines are regenerated from
//! their PEP 508 parse and carry no option but `--hash`, no URL and no `${VAR}`; no
//! `--only-binary`/`--no-binary` is ever accepted; accepted paths (local projects, includes) stay relative and
//! never climb out of the tree; every accepted line classifies the same way again.
#![no_main]

use iac_backends::build::requirements::{Line, classify, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    // The including file's directory: the root or a nested one (includes may climb back up).
    let base = match selector % 3 {
        0 => "",
        1 => "req",
        _ => "a/b",
    };
    for (number, verdict) in parse(text, base) {
        assert!(number >= 1, "line numbers start at 1");
        let Ok(line) = verdict else { continue };
        match &line {
            Line::Index(req) => {
                // What the resolver reads: the regenerated PEP 508 text plus validated hashes.
                let text = req.line();
                for token in text.split_whitespace() {
                    assert!(
                        !token.starts_with('-') || token.starts_with("--hash="),
                        "an option survived in {text:?}"
                    );
                }
                for h in &req.hashes {
                    assert!(h.starts_with("--hash="), "hash {h:?}");
                }
                assert!(!text.contains("://"), "a URL survived in {text:?}");
                assert!(!text.contains("${"), "a variable survived in {text:?}");
                assert!(!text.contains('\n'), "a line break survived in {text:?}");
                // Regeneration is a fixed point: the emitted text reads back as the same line.
                assert_eq!(
                    classify(&text, base),
                    Ok(line.clone()),
                    "{text:?} does not classify the same way again"
                );
            }
            Line::Local { path, .. } | Line::Include { path, .. } => {
                assert!(!path.starts_with('/'), "absolute path {path:?} accepted");
                assert!(!path.starts_with('~'), "home path {path:?} accepted");
                assert!(
                    !path.split('/').any(|p| p == ".."),
                    "{path:?} climbs out of the tree"
                );
            }
            Line::Option(opt) => {
                // --only-binary/--no-binary would override iac's own choice of wheels and
                // sdists: never accepted.
                assert!(
                    ["--pre", "--prefer-binary", "--require-hashes"].contains(&opt.as_str()),
                    "unexpected option {opt:?} accepted"
                );
            }
        }
    }
});
