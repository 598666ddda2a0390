//! The import layering of `src/`, as `docs/architecture.md` writes it down:
//! a module imports only from its own layer or lower ones, and top-level
//! modules never import each other in a cycle. Test code is left out.
//!
//! The checker is plain text analysis (comments and literals blanked, then
//! `crate::` and `super::` paths read), so the unit tests below feed it
//! small made-up crates to show that it fails where it must.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file: its path relative to the crate (`src/a/b.rs`) and text.
struct SourceFile {
    path: String,
    text: String,
}

/// An import of another top-level module found in a file.
struct Import {
    line: usize,
    target: String,
    snippet: String,
    /// Found as `super::…`: a name there may be an item of an inline module.
    via_super: bool,
}

/// Layer number per top-level module, from the ```layering block.
fn parse_layering(doc: &str) -> Result<BTreeMap<String, u32>, String> {
    let mut layers = BTreeMap::new();
    let mut inside = false;
    let mut seen_block = false;
    for (n, line) in doc.lines().enumerate() {
        let trimmed = line.trim();
        if !inside {
            if trimmed == "```layering" {
                inside = true;
                seen_block = true;
            }
            continue;
        }
        if trimmed.starts_with("```") {
            inside = false;
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        let (number, modules) = trimmed.split_once(':').ok_or_else(|| {
            format!(
                "line {}: a layer is `N: module, module`, got {trimmed:?}",
                n + 1
            )
        })?;
        let number: u32 = number
            .trim()
            .parse()
            .map_err(|_| format!("line {}: {number:?} is not a layer number", n + 1))?;
        for module in modules.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            if let Some(other) = layers.insert(module.to_string(), number) {
                return Err(format!(
                    "line {}: module {module} is listed twice (layers {other} and {number})",
                    n + 1
                ));
            }
        }
    }
    if !seen_block {
        return Err("no ```layering block".into());
    }
    if layers.is_empty() {
        return Err("the ```layering block lists no module".into());
    }
    Ok(layers)
}

/// The text with comments, string and char literals replaced by spaces
/// (newlines kept), so that line numbers hold and braces in literals do not
/// count.
fn blank_comments_and_literals(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let ident_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if b[i..].starts_with(b"//") {
            let end = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            let mut j = i;
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if !ident_before && (b[i] == b'r' || b[i..].starts_with(b"br")) && {
            let start = if b[i] == b'b' { i + 2 } else { i + 1 };
            let hashes = b[start..].iter().take_while(|&&c| c == b'#').count();
            b.get(start + hashes) == Some(&b'"')
        } {
            let start = if b[i] == b'b' { i + 2 } else { i + 1 };
            let hashes = b[start..].iter().take_while(|&&c| c == b'#').count();
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let body = start + hashes + 1;
            let end = b[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(b.len(), |p| body + p + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{1F600}'), or else a lifetime.
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map(|p| i + 2 + p)
            } else {
                let len = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + len) == Some(&b'\'')).then_some(i + 1 + len)
            };
            match end {
                Some(end) => {
                    blank(&mut out, i, end + 1);
                    i = end + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII bytes were replaced")
}

/// Byte ranges of items under `#[cfg(test)]` (or any cfg naming `test`
/// outside `not(...)`), and the names of `#[cfg(test)] mod name;` files.
fn test_items(code: &str) -> (Vec<(usize, usize)>, Vec<String>) {
    let b = code.as_bytes();
    let mut ranges = Vec::new();
    let mut test_mods = Vec::new();
    let mut from = 0;
    while let Some(p) = code[from..].find("#[cfg(") {
        let start = from + p;
        let Some(attr_len) = code[start..].find(']') else {
            break;
        };
        let attr = &code[start..start + attr_len];
        from = start + attr_len;
        let names_test = attr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == "test");
        if !names_test || attr.contains("not(") {
            continue;
        }
        // The item ends at the first `;` before any `{`, or at the `}`
        // closing the first `{`.
        let mut depth = 0usize;
        let mut end = b.len();
        for (k, &c) in b.iter().enumerate().skip(from + 1) {
            match c {
                b'{' => depth += 1,
                b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        let item = &code[from + 1..end];
        let words: Vec<&str> = item
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        if item.trim_end().ends_with(';') {
            if let Some(k) = words.iter().position(|w| *w == "mod") {
                if let Some(name) = words.get(k + 1) {
                    test_mods.push((*name).to_string());
                }
            }
        }
        ranges.push((start, end));
        from = end;
    }
    (ranges, test_mods)
}

/// `src/a/b.rs` -> `[a, b]`, `src/a/mod.rs` -> `[a]`, `src/lib.rs` -> `[]`.
fn module_path(path: &str) -> Vec<String> {
    let rel = path.strip_prefix("src/").unwrap_or(path);
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The file a `mod name;` in `path` declares, in either layout.
fn child_files(path: &str, name: &str) -> [String; 2] {
    let p = Path::new(path);
    let dir: PathBuf = match p.file_name().and_then(|f| f.to_str()) {
        Some("mod.rs" | "lib.rs" | "main.rs") => p.parent().unwrap_or(Path::new("")).into(),
        _ => p.with_extension(""),
    };
    [
        dir.join(format!("{name}.rs"))
            .to_string_lossy()
            .into_owned(),
        dir.join(name).join("mod.rs").to_string_lossy().into_owned(),
    ]
}

fn ident_at(s: &str) -> &str {
    let len = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..len]
}

/// The first segments of a `{a, b::c, d as e}` group.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut item_start = true;
    for (k, c) in group.char_indices() {
        match c {
            '{' => {
                depth += 1;
                item_start = depth == 1;
            }
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => item_start = true,
            c if item_start && depth == 1 && !c.is_whitespace() => {
                item_start = false;
                let head = ident_at(&group[k..]);
                if !head.is_empty() && head != "self" {
                    heads.push(head.to_string());
                }
            }
            _ => {}
        }
    }
    heads
}

/// Imports of top-level modules in one file's code outside test items.
fn imports(file: &SourceFile, code: &str, excluded: &[(usize, usize)]) -> Vec<Import> {
    let module = module_path(&file.path);
    let lines: Vec<&str> = file.text.lines().collect();
    let mut found = Vec::new();
    let b = code.as_bytes();
    let push = |at: usize, rest: &str, via_super: bool, found: &mut Vec<Import>| {
        let heads = if rest.starts_with('{') {
            group_heads(rest)
        } else {
            vec![ident_at(rest).to_string()]
        };
        let line = code[..at].matches('\n').count() + 1;
        for target in heads.into_iter().filter(|h| !h.is_empty()) {
            found.push(Import {
                line,
                target,
                snippet: lines.get(line - 1).map_or("", |l| l.trim()).to_string(),
                via_super,
            });
        }
    };
    let starts_path = |at: usize| {
        at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] == b'$')
    };
    let is_excluded = |at: usize| excluded.iter().any(|&(s, e)| (s..e).contains(&at));
    for (at, _) in code.match_indices("crate::") {
        if starts_path(at) && !is_excluded(at) {
            push(at, &code[at + "crate::".len()..], false, &mut found);
        }
    }
    for (at, _) in code.match_indices("super::") {
        if !starts_path(at) || is_excluded(at) || code[..at].ends_with("super::") {
            continue;
        }
        let mut rest = &code[at..];
        let mut climbs = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            climbs += 1;
            rest = r.trim_start();
        }
        if climbs == module.len() {
            push(at, rest, true, &mut found);
        }
    }
    found
}

/// Every way `files` break `layering`, one line each naming file, line and
/// the import; empty when they follow it.
fn check(files: &[SourceFile], layering: &BTreeMap<String, u32>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut code = BTreeMap::new();
    let mut test_files = BTreeSet::new();
    for f in files {
        let blanked = blank_comments_and_literals(&f.text);
        let (ranges, test_mods) = test_items(&blanked);
        for name in test_mods {
            test_files.extend(child_files(&f.path, &name));
        }
        code.insert(f.path.clone(), (blanked, ranges));
    }
    if let Some(lib) = files.iter().find(|f| f.path == "src/lib.rs") {
        let (blanked, _) = &code[&lib.path];
        for line in blanked.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(k) = words.iter().position(|w| *w == "mod") {
                let name = words.get(k + 1).map_or("", |w| w.trim_end_matches(';'));
                if !name.is_empty() && !layering.contains_key(name) {
                    problems.push(format!(
                        "src/lib.rs declares module {name}, which the layering in \
                         docs/architecture.md does not place in any layer"
                    ));
                }
            }
        }
    }
    // edges[(from, to)] = where it happens first
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    for f in files {
        let module = module_path(&f.path);
        let Some(source) = module.first() else {
            continue; // lib.rs: module declarations only
        };
        if f.path == "src/main.rs" || test_files.contains(&f.path) {
            continue;
        }
        let (blanked, ranges) = &code[&f.path];
        let Some(&source_layer) = layering.get(source) else {
            problems.push(format!(
                "{}: module {source} is in no layer of docs/architecture.md",
                f.path
            ));
            continue;
        };
        for import in imports(f, blanked, ranges) {
            if import.target == *source
                || (import.via_super && !layering.contains_key(&import.target))
            {
                continue;
            }
            let at = format!("{}:{}: `{}`", f.path, import.line, import.snippet);
            match layering.get(&import.target) {
                None => problems.push(format!(
                    "{at}: imports {}, which is in no layer of docs/architecture.md",
                    import.target
                )),
                Some(&target_layer) if target_layer > source_layer => problems.push(format!(
                    "{at}: {source} (layer {source_layer}) imports {} from the higher \
                     layer {target_layer}",
                    import.target
                )),
                Some(_) => {}
            }
            edges
                .entry((source.clone(), import.target.clone()))
                .or_insert(at);
        }
    }
    problems.extend(cycles(&edges));
    problems
}

/// One problem per cycle between top-level modules, naming each import on
/// it.
fn cycles(edges: &BTreeMap<(String, String), String>) -> Vec<String> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    let mut problems = Vec::new();
    let mut reported: BTreeSet<BTreeSet<&str>> = BTreeSet::new();
    for &start in next.keys() {
        // Breadth-first from `start`: the shortest way back to it, if any.
        let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut closing = None;
        while let Some(m) = queue.pop_front() {
            for &n in next.get(m).into_iter().flatten() {
                if n == start {
                    closing = Some(m);
                    break;
                }
                if !parent.contains_key(n) {
                    parent.insert(n, m);
                    queue.push_back(n);
                }
            }
            if closing.is_some() {
                break;
            }
        }
        let Some(mut m) = closing else { continue };
        let mut ring = vec![start];
        while m != start {
            ring.push(m);
            m = parent[m];
        }
        ring[1..].reverse();
        let members: BTreeSet<&str> = ring.iter().copied().collect();
        if !reported.insert(members) {
            continue;
        }
        let steps: Vec<String> = ring
            .iter()
            .zip(ring.iter().skip(1).chain([&start]))
            .map(|(a, b)| format!("{a} -> {b} ({})", edges[&(a.to_string(), b.to_string())]))
            .collect();
        problems.push(format!("import cycle: {}", steps.join(", ")));
    }
    problems
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn src_follows_the_layering_of_docs_architecture() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc =
        std::fs::read_to_string(root.join("docs/architecture.md")).expect("docs/architecture.md");
    let layering = parse_layering(&doc).unwrap_or_else(|e| panic!("docs/architecture.md: {e}"));
    let mut paths = Vec::new();
    rust_files(&root.join("src"), &mut paths);
    let files: Vec<SourceFile> = paths
        .iter()
        .map(|p| SourceFile {
            path: p
                .strip_prefix(root)
                .expect("under the crate")
                .to_string_lossy()
                .into_owned(),
            text: std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        })
        .collect();
    assert!(
        files.iter().any(|f| f.path == "src/lib.rs") && files.len() > 20,
        "found only {} files under src/",
        files.len()
    );
    let problems = check(&files, &layering);
    assert!(
        problems.is_empty(),
        "imports against docs/architecture.md:\n{}",
        problems.join("\n")
    );
}

const LAYERS: &str = "intro\n```layering\n1: reading\n2: buffer, clock\n3: session\n```\n";

fn file(path: &str, text: &str) -> SourceFile {
    SourceFile {
        path: path.into(),
        text: text.into(),
    }
}

fn check_crate(files: &[SourceFile]) -> Vec<String> {
    check(files, &parse_layering(LAYERS).unwrap())
}

#[test]
fn an_import_from_a_higher_layer_is_named_with_file_and_line() {
    let problems = check_crate(&[
        file(
            "src/lib.rs",
            "pub mod buffer;\npub mod reading;\npub mod session;\n",
        ),
        file("src/reading.rs", "pub struct Reading;\n"),
        file(
            "src/buffer/mod.rs",
            "//! The queue.\nuse crate::reading::Reading;\nuse crate::session::Window;\n",
        ),
        file("src/session.rs", "use crate::buffer::Buffer;\n"),
    ]);
    assert_eq!(
        problems,
        [
            "src/buffer/mod.rs:3: `use crate::session::Window;`: buffer (layer 2) imports \
             session from the higher layer 3",
            "import cycle: buffer -> session (src/buffer/mod.rs:3: `use crate::session::Window;`), \
             session -> buffer (src/session.rs:1: `use crate::buffer::Buffer;`)",
        ]
    );
}

#[test]
fn groups_code_paths_and_super_paths_count_as_imports() {
    let problems = check_crate(&[
        file(
            "src/reading.rs",
            "use crate::{\n    buffer::Store,\n    reading as r,\n};\n",
        ),
        file(
            "src/buffer/sqlite.rs",
            "fn f() { let w = crate::session::window(); }\n",
        ),
        file(
            "src/buffer/codec.rs",
            "use super::super::session::X;\nuse super::Y;\n",
        ),
    ]);
    let lines: Vec<&str> = problems
        .iter()
        .map(|p| p.split(": `").next().unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            "src/reading.rs:1",
            "src/buffer/sqlite.rs:1",
            "src/buffer/codec.rs:1"
        ],
        "{problems:#?}"
    );
}

#[test]
fn same_layer_cycles_fail_and_tests_comments_strings_do_not_count() {
    let problems = check_crate(&[
        file(
            "src/buffer/mod.rs",
            "#[cfg(test)]\nmod proptests;\n#[cfg(test)]\nmod tests {\n    \
             use crate::session::S;\n    fn f() { let s = \"}\"; }\n}\n\
             // crate::session::x\nconst A: &str = \"crate::session\";\n\
             const B: &str = r#\"crate::session\"#;\nfn g<'a>(c: char) -> bool { c == '{' }\n\
             use crate::clock::Clock;\n",
        ),
        file("src/buffer/proptests.rs", "use crate::session::Anything;\n"),
        file("src/clock.rs", "use crate::buffer::Buffer;\n"),
    ]);
    assert_eq!(
        problems,
        [
            "import cycle: buffer -> clock (src/buffer/mod.rs:12: `use crate::clock::Clock;`), \
          clock -> buffer (src/clock.rs:1: `use crate::buffer::Buffer;`)"
        ]
    );
}

#[test]
fn a_module_outside_the_layering_fails() {
    let problems = check_crate(&[
        file("src/lib.rs", "pub mod reading;\npub mod commands;\n"),
        file("src/reading.rs", "use crate::commands::Run;\n"),
    ]);
    assert_eq!(
        problems,
        [
            "src/lib.rs declares module commands, which the layering in docs/architecture.md \
             does not place in any layer",
            "src/reading.rs:1: `use crate::commands::Run;`: imports commands, which is in no \
             layer of docs/architecture.md",
        ]
    );
    assert!(parse_layering("```layering\n1 reading\n```").is_err());
    assert!(parse_layering("no block").is_err());
}
