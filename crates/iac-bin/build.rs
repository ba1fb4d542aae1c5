//! Embeds the image recipe of `iac bootstrap`: every file of `scripts/images/` becomes an entry of
//! `RECIPE_FILES` (name, bytes) in `$OUT_DIR/recipe_files.rs`, so a file added there is carried by
//! the binary without touching the code. `scripts/bootstrap-images.sh` itself is `include_str!`ed
//! by `src/commands/bootstrap.rs`.

use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let scripts = Path::new(&manifest).join("../../scripts");
    let images = scripts.join("images");
    println!("cargo:rerun-if-changed={}", images.display());
    println!(
        "cargo:rerun-if-changed={}",
        scripts.join("bootstrap-images.sh").display()
    );
    let mut files: Vec<_> = std::fs::read_dir(&images)
        .unwrap_or_else(|e| panic!("read {}: {e}", images.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut out = String::from("&[\n");
    for p in files {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 file name");
        let abs = std::fs::canonicalize(&p).expect("canonical path");
        out.push_str(&format!("    ({name:?}, include_bytes!({abs:?})),\n"));
    }
    out.push_str("]\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("recipe_files.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("write {}: {e}", dest.display()));
}
