//! Keeps the crate's modules layered: each top-level module may name only modules listed before
//! it in [`ORDER`], so dependencies point down and an import cycle cannot come back unnoticed.
//!
//! A module's dependencies are the `crate::NAME` paths (`use crate::{a, b::{c}}` included) and,
//! in a folder module's files, the `super::` paths that climb to the crate root, in its code
//! before the first `#[cfg(test)]` line (test modules sit at the end of their files and may
//! reach anywhere). Comments and literals are skipped: an intra-doc link to a higher module is
//! documentation, not a dependency. A name that is no module (`crate::run`, `crate::Error`) is
//! an item of the crate root, `lib`.
//!
//! Plain text scanning rather than a parser, so the test needs no dependency.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The crate's top-level modules, lowest first; `lib` is the crate root (`lib.rs`). Each one may
/// use only those before it. A new module goes where its dependencies put it.
const ORDER: &[&str] = &[
    "clock",
    "error",
    "stats",
    "proto",
    "params",
    "token",
    "target",
    "sys",
    "plan",
    "shared",
    "conn",
    "longpoll",
    "scenario",
    "probe",
    "report",
    "worker",
    "plot",
    "multiproc",
    "lib",
];

#[test]
fn modules_only_use_modules_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    assert!(files.len() > ORDER.len(), "found only {} .rs files under {}", files.len(), src.display());
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap_or(f).to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
            (rel, text)
        })
        .collect();
    let problems = violations(&sources);
    assert!(problems.is_empty(), "module order broken:\n{}", problems.join("\n"));
    let tops: BTreeSet<String> = sources.iter().filter_map(|(rel, _)| top_of(rel)).collect();
    for m in ORDER {
        assert!(tops.contains(*m), "ORDER lists `{m}`, but src/ has no such module: drop it from ORDER");
    }
}

/// The checker itself: an upward `use`, a path in nested braces and a `super::` that climbs to
/// the crate root are caught; comments, strings, test modules and downward uses are not.
#[test]
fn the_check_catches_upward_uses() {
    let files = |rel: &str, text: &str| vec![(rel.to_string(), text.to_string())];
    let ok =
        "//! See [`crate::worker::Worker`].\nuse crate::clock::now_ns;\nuse crate::{error::Error, params::{Load}};\n\
              fn f() -> &'static str { let _c = 'x'; \"crate::worker\" }\n\
              #[cfg(test)]\nmod tests { use crate::worker::Worker; }\n";
    assert_eq!(violations(&files("token.rs", ok)), Vec::<String>::new());

    let up = violations(&files("token.rs", "use crate::{clock::now_ns, shared::{Run, RUN}};\n"));
    assert_eq!(up.len(), 1, "{up:?}");
    assert!(up[0].contains("token.rs") && up[0].contains("`token`") && up[0].contains("`shared`"), "{up:?}");

    let late = violations(&files("token.rs", "//! Not `#[cfg(test)]` code.\nuse crate::worker::Worker;\n"));
    assert_eq!(late.len(), 1, "{late:?}");

    let root = violations(&files("multiproc.rs", "fn f() { crate::progress_line(); }\n"));
    assert!(root.len() == 1 && root[0].contains("`lib`"), "{root:?}");

    let climb = violations(&files("proto/ws.rs", "use super::sio;\nuse super::super::conn::Io;\n"));
    assert!(climb.len() == 1 && climb[0].contains("`conn`"), "{climb:?}");

    let stray = violations(&files("extra.rs", "use crate::clock::now_ns;\n"));
    assert!(stray.len() == 1 && stray[0].contains("not in ORDER"), "{stray:?}");
}

/// Every `.rs` file under `dir`, sorted so the report is stable.
fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())).path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The problems in `sources` (`(path under src/, text)`), one line each.
fn violations(sources: &[(String, String)]) -> Vec<String> {
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut problems = Vec::new();
    for (rel, text) in sources {
        // main.rs is the binary's own crate root: its `crate::` is not this library.
        let Some(own) = top_of(rel) else { continue };
        let Some(own_rank) = rank(&own) else {
            problems.push(format!("src/{rel}: module `{own}` is not in ORDER: add it where its dependencies put it"));
            continue;
        };
        let code = strip(&before_tests(text));
        for named in referenced(&code, &module_path(rel)) {
            // Anything that is not a module is an item of the crate root.
            let named = if rank(&named).is_some() { named } else { "lib".to_string() };
            if rank(&named).is_some_and(|r| r > own_rank) {
                problems.push(format!(
                    "src/{rel}: module `{own}` uses `{named}`, which comes after it; a module may only use the \
                     modules before it in ORDER ({})",
                    ORDER.join(" < ")
                ));
            }
        }
    }
    problems
}

/// The lines before the first `#[cfg(test)]` line: test modules sit at the end of their files.
fn before_tests(text: &str) -> String {
    text.lines().take_while(|l| !l.trim_start().starts_with("#[cfg(test)]")).collect::<Vec<_>>().join("\n")
}

/// The top-level module a file belongs to: `a.rs`, `a/mod.rs`, `a/b.rs` → `a`; `lib.rs` → `lib`;
/// `main.rs` → none.
fn top_of(rel: &str) -> Option<String> {
    match rel {
        "main.rs" => None,
        "lib.rs" => Some("lib".into()),
        _ => module_path(rel).into_iter().next(),
    }
}

/// The module path a file defines: `a.rs` and `a/mod.rs` → `[a]`, `a/b.rs` → `[a, b]`, `lib.rs`
/// → `[]`.
fn module_path(rel: &str) -> Vec<String> {
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// `code` with comments, string literals and char literals blanked out, so that only code is
/// scanned for paths.
fn strip(code: &str) -> String {
    let c: Vec<char> = code.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < c.len() {
        if at(i) == '/' && at(i + 1) == '/' {
            while i < c.len() && at(i) != '\n' {
                i += 1;
            }
        } else if at(i) == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if at(i) == 'r'
            && (i == 0 || !ident(at(i - 1)) || (at(i - 1) == 'b' && !ident(at(i.wrapping_sub(2)))))
            && (at(i + 1) == '"' || at(i + 1) == '#')
        {
            // A raw string r"..." or r#"..."#: it ends at a quote followed by as many hashes.
            let mut hashes = 0;
            let mut j = i + 1;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            if at(j) != '"' {
                out.push(at(i));
                i += 1;
                continue;
            }
            j += 1;
            while j < c.len() && !(at(j) == '"' && (1..=hashes).all(|h| at(j + h) == '#')) {
                j += 1;
            }
            i = j + 1 + hashes;
            out.push(' ');
        } else if at(i) == '"' {
            i += 1;
            while i < c.len() && at(i) != '"' {
                i += if at(i) == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if at(i) == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A char literal ('x', '\n', '\''); a lifetime ('a) has no closing quote.
            i += if at(i + 1) == '\\' { 3 } else { 2 };
            while i < c.len() && at(i) != '\'' {
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else {
            out.push(at(i));
            i += 1;
        }
    }
    out
}

/// Identifiers and punctuation, with `::` as one token.
fn tokens(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            if !ch.is_whitespace() {
                out.push(ch.to_string());
            }
            i += 1;
        }
    }
    out
}

/// The top-level names `code` reaches through `crate::` and through `super::` chains that climb
/// to the crate root, for a file whose module path is `path`. A `super::` that stays inside the
/// file's own top-level module yields that module.
fn referenced(code: &str, path: &[String]) -> BTreeSet<String> {
    let t = tokens(code);
    let is = |i: usize, s: &str| t.get(i).is_some_and(|x| x == s);
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < t.len() {
        if is(i, "crate") && is(i + 1, "::") {
            i = heads(&t, i + 2, &mut names);
            continue;
        }
        // A path that starts with `super` (not `x::super`, nor `pub(super)`).
        if is(i, "super") && is(i + 1, "::") && !(i > 0 && is(i - 1, "::")) {
            let mut up = 0;
            while is(i, "super") && is(i + 1, "::") {
                up += 1;
                i += 2;
            }
            match path.len().checked_sub(up) {
                Some(0) => i = heads(&t, i, &mut names),
                // Still inside the file's own top-level module.
                Some(_) => {
                    names.insert(path[0].clone());
                }
                // Above the crate root: rustc refuses it already.
                None => {}
            }
            continue;
        }
        i += 1;
    }
    names
}

/// Reads the first segment of the path starting at token `i` (a name, or a `{...}` group of
/// paths, nested ones included) into `names`; returns the index after what it read.
fn heads(t: &[String], mut i: usize, names: &mut BTreeSet<String>) -> usize {
    match t.get(i).map(String::as_str) {
        Some("{") => {
            i += 1;
            loop {
                match t.get(i).map(String::as_str) {
                    None => return i,
                    Some("}") => return i + 1,
                    Some(",") => i += 1,
                    Some(_) => {
                        i = heads(t, i, names);
                        // Skip the rest of this entry (`::more::{...}`, `as x`).
                        let mut depth = 0usize;
                        while let Some(tok) = t.get(i).map(String::as_str) {
                            match tok {
                                "{" => depth += 1,
                                "}" if depth == 0 => break,
                                "}" => depth -= 1,
                                "," if depth == 0 => break,
                                _ => {}
                            }
                            i += 1;
                        }
                    }
                }
            }
        }
        Some(name) => {
            names.insert(if name == "self" { "lib".to_string() } else { name.to_string() });
            i + 1
        }
        None => i,
    }
}
