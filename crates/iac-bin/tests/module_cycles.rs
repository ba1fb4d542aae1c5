//! No import cycles between the top-level modules of any crate (issue 21): module A using
//! `crate::B::…` while B uses `crate::A::…` (directly or round a longer loop) means neither can be
//! read, tested or moved alone. This reads every crate's `src/`, takes each file's top-level module
//! (`src/build/docker.rs` → `build`), collects the `crate::<module>` paths its non-test code names
//! (comments and `#[cfg(test)] mod …` blocks are left out), and fails naming every cycle with the
//! file and line of each edge in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("crates/iac-bin sits two levels under the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A file's lines with comments blanked and everything from a braced `#[cfg(test)] mod … {` on
/// dropped (a `#[cfg(test)] mod tests;` declaration drops nothing: its file is skipped instead).
fn code_lines(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            let next = lines[i + 1..]
                .iter()
                .map(|l| l.trim_start())
                .find(|l| !l.starts_with("#["));
            if next.is_some_and(|l| {
                (l.starts_with("mod ") || l.starts_with("pub mod ")) && l.contains('{')
            }) {
                break;
            }
        }
        out.push(strip_comment(line));
    }
    out
}

/// The line without a `//` comment (a `//` inside a string literal is kept).
fn strip_comment(line: &str) -> String {
    let mut in_str = false;
    let mut prev = '\0';
    for (i, c) in line.char_indices() {
        match c {
            '"' if prev != '\\' => in_str = !in_str,
            '/' if !in_str && prev == '/' => return line[..i - 1].to_string(),
            _ => {}
        }
        prev = if prev == '\\' && c == '\\' { '\0' } else { c };
    }
    line.to_string()
}

/// `crate::name` occurrences in a line.
fn crate_paths(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i + "crate::".len()..];
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // `iac_crate::x` or `$crate::x` are not this crate's paths.
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') && end > 0 {
            out.push(&tail[..end]);
        }
        rest = &tail[end..];
    }
    out
}

/// The first segment of each item of every `crate::{…}` group in `code` (groups may span lines),
/// with the 1-based line the group starts on.
fn grouped_paths(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::{") {
        let start = from + i + "crate::{".len();
        let line = code[..start].matches('\n').count() + 1;
        let (mut depth, mut item_start, mut end) = (0usize, start, code.len());
        for (j, c) in code[start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = start + j;
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push((line, first_segment(&code[item_start..start + j])));
                    item_start = start + j + 1;
                }
                _ => {}
            }
        }
        out.push((line, first_segment(&code[item_start..end])));
        from = end;
    }
    out.retain(|(_, s)| !s.is_empty());
    out
}

fn first_segment(item: &str) -> String {
    item.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// `super::…::name` paths that climb `depth` levels, to the crate root: `name` is a top-level
/// module (from `src/a.rs` one `super::`, from `src/a/b.rs` two).
fn super_paths(line: &str, depth: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = line[at..].find("super::") {
        let start = at + i;
        let before = line[..start].chars().next_back();
        // Count the run of `super::` starting here.
        let mut k = 0;
        let mut end = start;
        while line[end..].starts_with("super::") {
            k += 1;
            end += "super::".len();
        }
        if k == depth && !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            let name = first_segment(&line[end..]);
            if !name.is_empty() {
                out.push(name);
            }
        }
        at = end;
    }
    out
}

/// Edges `from → to` with the first place each is seen.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn graph_of(crate_dir: &Path) -> Graph {
    let src = crate_dir.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let module_of = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix(&src).unwrap();
        let first = rel.components().next()?.as_os_str().to_str()?.to_string();
        let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        (name != "lib" && name != "main").then_some(name)
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|p| module_of(p)).collect();
    let mut g: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for f in &files {
        let Some(from) = module_of(f) else { continue };
        let name = f.file_name().unwrap().to_str().unwrap();
        if name == "tests.rs" || name.starts_with("tests_") {
            continue; // test-only modules (`#[cfg(test)] mod tests;` in their parent)
        }
        let text = std::fs::read_to_string(f).unwrap();
        // How many `super::` reach the crate root from this file.
        let rel = f.strip_prefix(&src).unwrap();
        let depth = rel.components().count() - usize::from(name == "mod.rs");
        let lines = code_lines(&text);
        let mut found: Vec<(usize, String)> = grouped_paths(&lines.join("\n"));
        for (n, line) in lines.iter().enumerate() {
            found.extend(
                crate_paths(line)
                    .into_iter()
                    .map(|to| (n + 1, to.to_string())),
            );
            found.extend(super_paths(line, depth).into_iter().map(|to| (n + 1, to)));
        }
        found.sort();
        for (n, to) in found {
            if to != from && modules.contains(&to) {
                let at = format!("{}:{n}", f.strip_prefix(workspace()).unwrap().display());
                g.get_mut(&from).unwrap().entry(to).or_insert(at);
            }
        }
    }
    g
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g[v].keys() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let mut problems = Vec::new();
    let mut crates = Vec::new();
    for e in std::fs::read_dir(workspace().join("crates")).unwrap() {
        let dir = e.unwrap().path();
        if dir.join("src").is_dir() {
            crates.push(dir);
        }
    }
    crates.sort();
    assert!(crates.len() >= 4, "found only {crates:?}");
    for dir in &crates {
        let g = graph_of(dir);
        for comp in cycles(&g) {
            let mut s = format!(
                "{}: modules {} use each other:",
                dir.file_name().unwrap().to_str().unwrap(),
                comp.join(", ")
            );
            for a in &comp {
                for (b, at) in &g[a] {
                    if comp.contains(b) {
                        s.push_str(&format!("\n    {a} → {b} ({at})"));
                    }
                }
            }
            problems.push(s);
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_reader_sees_paths_and_skips_comments_and_tests() {
    assert_eq!(
        crate_paths("use crate::a::B; x = crate::c(); iac_crate::d; $crate::e"),
        vec!["a", "c"]
    );
    assert_eq!(
        strip_comment("let u = \"http://x\"; // crate::a"),
        "let u = \"http://x\"; "
    );
    let lines = code_lines(
        "use crate::a;\n/// crate::b\n#[cfg(test)]\n#[allow(x)]\nmod tests {\n use crate::c;\n}\n",
    );
    assert_eq!(lines.concat().matches("crate::").count(), 1);
    let decl = code_lines("#[cfg(test)]\nmod tests;\nuse crate::d;\n");
    assert_eq!(
        decl.concat().matches("crate::").count(),
        1,
        "a declaration drops nothing"
    );
    assert_eq!(
        grouped_paths("use crate::{\n    a::X,\n    b::{Y, Z},\n    c,\n};"),
        vec![
            (1, "a".to_string()),
            (1, "b".to_string()),
            (1, "c".to_string())
        ]
    );
    assert_eq!(
        super_paths("use super::a::X; use super::super::b;", 1),
        vec!["a"]
    );
    assert_eq!(
        super_paths("use super::a::X; use super::super::b;", 2),
        vec!["b"]
    );
    let mut g = Graph::new();
    for (a, b) in [("x", "y"), ("y", "z"), ("z", "x"), ("z", "w")] {
        g.entry(a.into())
            .or_default()
            .insert(b.into(), String::new());
        g.entry(b.into()).or_default();
    }
    assert_eq!(cycles(&g), vec![vec!["x", "y", "z"]]);
}
