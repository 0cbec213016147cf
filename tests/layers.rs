//! The crate's layers (docs/architecture.md): a module may name only modules of the layers
//! below it, or earlier in its own layer. This test reads every source file of the server and
//! fails on an upward `use` or `crate::` path, so the order cannot erode one import at a time.
//!
//! Comments are not code: a doc link may point anywhere. Test code (`#[cfg(test)]` items) may
//! use anything, as may `main.rs` (the binary) and `lib.rs` (the module map).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first; inside a layer, a module may use the ones listed before it.
const LAYERS: &[(&str, &[&str])] = &[
    ("foundation", &["util", "names", "metrics", "ring", "sidecar", "limits"]),
    ("pure codecs", &["http", "ws"]),
    ("runtime", &["shard"]),
    ("services and protocols", &["auth", "membership", "store", "cluster", "engineio", "socketio", "chat"]),
    ("what a node serves", &["app"]),
    ("assembly", &["config", "node"]),
];

/// Files that are not part of the layered library: the crate root, the binary (`main.rs` and its
/// `client.rs`) and test helpers.
const EXEMPT: &[&str] = &["lib.rs", "main.rs", "client.rs", "test_util.rs"];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().flat_map(|(_, mods)| mods.iter()).position(|m| *m == module)
}

fn layer_of(module: &str) -> &'static str {
    LAYERS.iter().find(|(_, mods)| mods.contains(&module)).map_or("?", |(name, _)| name)
}

/// The source with comments and string literals blanked out and `#[cfg(test)]` items removed.
fn code_of(source: &str) -> String {
    without_test_items(&blanked(source))
}

/// Removes each item marked `#[cfg(test)]`: up to its `;`, or to the brace that closes its
/// body.
fn without_test_items(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i]);
        let item = &rest[i + MARK.len()..];
        let end = match (item.find('{'), item.find(';')) {
            (Some(open), semi) if semi.is_none_or(|s| open < s) => {
                let mut depth = 0;
                let mut end = item.len();
                for (j, c) in item.char_indices().skip_while(|(j, _)| *j < open) {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = j + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (_, Some(semi)) => semi + 1,
            _ => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The source with comments and string literals blanked out.
fn blanked(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let b = source.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = source[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The top-level modules that `code` names through `crate::`: `crate::a::b`, `crate::a` and
/// every head of `crate::{a::{..}, b}`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let before_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'_';
        if before_ok {
            if let Some(group) = after.strip_prefix('{') {
                // The items of the group at its top level, each named by its first identifier.
                let mut depth = 1;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 || (depth == 1 && c == ',') {
                        names.extend(head(&item));
                        item.clear();
                        if depth == 0 {
                            break;
                        }
                    } else {
                        item.push(c);
                    }
                }
            } else {
                let ident: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !ident.is_empty() {
                    names.insert(ident);
                }
            }
        }
        rest = &rest[i + "crate::".len()..];
    }
    names
}

/// The first identifier of a `use` item (`shard::{Shard, ..}` names `shard`).
fn head(item: &str) -> Option<String> {
    let ident: String = item.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!ident.is_empty()).then_some(ident)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every upward use in the tree under `src`: (file, its module, the module it names).
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src").to_string_lossy().replace('\\', "/");
        if EXEMPT.contains(&rel.as_str()) {
            continue;
        }
        let module = rel.split('/').next().unwrap_or_default().trim_end_matches(".rs").to_string();
        let Some(own) = rank(&module) else {
            found.push(format!("{rel}: module `{module}` is in no layer; add it to LAYERS and docs/architecture.md"));
            continue;
        };
        let source = std::fs::read_to_string(&file).expect("a readable source file");
        for named in named_modules(&code_of(&source)) {
            if named == module {
                continue;
            }
            match rank(&named) {
                Some(r) if r < own => {}
                Some(_) => found.push(format!(
                    "{rel}: `{module}` ({}) names `{named}` ({}), which is not below it",
                    layer_of(&module),
                    layer_of(&named)
                )),
                // Re-exports at the crate root (`crate::Config`) and macros are not modules.
                None if named.chars().next().is_some_and(char::is_uppercase) => {}
                None => found.push(format!("{rel}: names `crate::{named}`, which is in no layer")),
            }
        }
    }
    found
}

#[test]
fn dependencies_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "upward dependencies (each module may use only the layers below it and the modules before \
         it in its own layer; see docs/architecture.md):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn every_module_of_the_crate_is_in_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    for line in code_of(&lib).lines() {
        let line = line.trim();
        let Some(name) = line.strip_prefix("pub mod ").or_else(|| line.strip_prefix("mod ")) else { continue };
        let name = name.trim_end_matches(';');
        assert!(rank(name).is_some() || name == "test_util", "`{name}` is in no layer");
    }
}

#[test]
fn the_checker_sees_upward_uses_and_ignores_comments() {
    let code = code_of(
        "use crate::{ring::Inbox, shard::{Shard, conn::Conn}, metrics};\n\
         // crate::node in a comment\n\
         /// [`crate::app::Route`]\n\
         let s = \"crate::config\";\n\
         fn f() { crate::chat::post(); }\n\
         #[cfg(test)]\nmod tests { use crate::node; fn g() { crate::app::x(); } }\n\
         #[cfg(test)]\nuse crate::config;\n\
         fn h() { crate::util::now(); }",
    );
    let named: Vec<String> = named_modules(&code).into_iter().collect();
    assert_eq!(named, ["chat", "metrics", "ring", "shard", "util"]);

    let dir = std::env::temp_dir().join(format!("imks-layers-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("shard")).expect("a temp dir");
    std::fs::write(dir.join("shard/mod.rs"), "use crate::ring::Inbox;\nfn f() { crate::chat::post(); }\n")
        .expect("a temp file");
    std::fs::write(dir.join("ws.rs"), "use crate::http::Response;\n").expect("a temp file");
    let found = violations(&dir);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("shard/mod.rs: `shard` (runtime) names `chat`"), "{found:?}");
}
