//! The layout is the architecture: data flows one way (source → pipeline → detect →
//! correlate → sink), and this test reads `src/` and fails on an import that goes
//! against it or closes a cycle between the top-level modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules that hold the flow's pure core; they must not reach out to the
/// parts that do I/O or assemble the program.
const CORE: &[&str] = &["detect", "pipeline", "correlate", "model", "feature"];
const OUTER: &[&str] = &["source", "sink", "http", "app", "config", "kafka"];

/// Markers of I/O that `protocol/` (pure codecs and maps) must not contain.
const IO_MARKERS: &[&str] = &[
    "std::fs",
    "std::net",
    "tokio::",
    "File::",
    "read_to_string",
    "TcpStream",
    "tomlfile::read",
];

/// One `.rs` file: its module path (`src/detect/cusum.rs` → `detect::cusum`) and text.
struct SourceFile {
    module: Vec<String>,
    path: PathBuf,
    text: String,
}

fn read_tree(root: &Path) -> Vec<SourceFile> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).expect("under root");
                let mut module: Vec<String> = rel
                    .with_extension("")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                    module.pop();
                }
                let text = std::fs::read_to_string(&path).expect("readable source");
                out.push(SourceFile { module, path, text });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The code without comments and with the contents of string and char literals
/// blanked, so that prose or a message naming a module is not an import.
fn code_of(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && matches!(next, Some('#' | '"'))
            && !(i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == '_'))
        {
            let hashes = b[i + 1..].iter().take_while(|&&h| h == '#').count();
            if b.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            i += hashes + 2;
            while i < b.len()
                && !(b[i] == '"'
                    && b[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&h| h == '#')
                        .count()
                        == hashes)
            {
                out.push(blank(b[i]));
                i += 1;
            }
            i += 1 + hashes;
        } else if c == '"' {
            // `#[serde(with = "crate::time::serde_ts")]` names a module in a string.
            let start = i + 1;
            i = start;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            let content: String = b[start..i.min(b.len())].iter().collect();
            let is_path = (content.starts_with("crate::") || content.starts_with("super::"))
                && content
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            out.push(' ');
            if is_path {
                out.push_str(&content);
            } else {
                out.extend(content.chars().map(blank));
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && next == Some('\\') {
            i += 2;
            while i < b.len() && b[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c == '\'' && b.get(i + 2) == Some(&'\'') {
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_at(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// The top-level names a path that starts at `rest` (just after `crate::`) reaches:
/// one for `a::b`, several for `{a::b, c}`.
fn heads(rest: &str) -> Vec<String> {
    if let Some(group) = rest.strip_prefix('{') {
        let mut out = Vec::new();
        let mut depth = 0usize;
        let mut at_item_start = true;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => at_item_start = true,
                c if c.is_whitespace() => {}
                _ if at_item_start && depth == 0 => {
                    if let Some(id) = ident_at(&group[i..]) {
                        out.push(id.to_owned());
                    }
                    at_item_start = false;
                }
                _ => {}
            }
        }
        out
    } else {
        ident_at(rest)
            .map(|s| vec![s.to_owned()])
            .unwrap_or_default()
    }
}

/// Every module path (absolute, from the crate root) that a file's code names.
fn references(file: &SourceFile) -> BTreeSet<Vec<String>> {
    let code = code_of(&file.text);
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        if i > 0 && code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue; // e.g. `mycrate::`
        }
        for h in heads(&code[i + "crate::".len()..]) {
            out.insert(vec![h]);
        }
    }
    for (i, _) in code.match_indices("super::") {
        if i > 0 && code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            continue; // counted from its first `super::`
        }
        let mut base = file.module.clone();
        let mut rest = &code[i..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        for h in heads(rest) {
            let mut m = base.clone();
            m.push(h);
            out.insert(m);
        }
    }
    out
}

/// The graph between top-level modules, with one file that makes each edge.
fn top_level_graph(files: &[SourceFile]) -> BTreeMap<(String, String), PathBuf> {
    let tops: BTreeSet<&str> = files
        .iter()
        .filter_map(|f| f.module.first().map(String::as_str))
        .collect();
    let mut edges = BTreeMap::new();
    for f in files {
        let Some(from) = f.module.first() else {
            continue;
        };
        if from == "main" {
            continue; // the binary is a client of the library, not part of it
        }
        for r in references(f) {
            let to = &r[0];
            if to != from && tops.contains(to.as_str()) {
                edges
                    .entry((from.clone(), to.clone()))
                    .or_insert_with(|| f.path.clone());
            }
        }
    }
    edges
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(edges: &BTreeMap<(String, String), PathBuf>) -> Vec<Vec<String>> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        adj.entry(a).or_default().push(b);
        adj.entry(b).or_default();
    }
    struct T<'a> {
        adj: &'a BTreeMap<&'a str, Vec<&'a str>>,
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
        for &w in &t.adj[v] {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        adj: &adj,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for &v in adj.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// Every broken rule, one line each.
fn violations(files: &[SourceFile]) -> Vec<String> {
    let edges = top_level_graph(files);
    let mut out = Vec::new();
    for ((from, to), path) in &edges {
        let core_out = CORE.contains(&from.as_str()) && OUTER.contains(&to.as_str());
        let sim_detect = from == "sim" && to == "detect";
        let protocol_out =
            from == "protocol" && !["model", "time", "tomlfile"].contains(&to.as_str());
        if core_out || sim_detect || protocol_out {
            out.push(format!("{from} → {to} (in {})", path.display()));
        }
    }
    for c in cycles(&edges) {
        out.push(format!("import cycle between {}", c.join(", ")));
    }
    for f in files
        .iter()
        .filter(|f| f.module.first().is_some_and(|m| m == "protocol"))
    {
        // Unit tests (at the end of a file) may read the shipped profiles.
        let text = f.text.split("#[cfg(test)]").next().unwrap_or_default();
        let code = code_of(text);
        for m in IO_MARKERS.iter().filter(|m| code.contains(*m)) {
            out.push(format!("protocol does I/O: `{m}` in {}", f.path.display()));
        }
    }
    out
}

#[test]
fn src_follows_the_flow_and_has_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = read_tree(&src);
    assert!(
        files.len() > 20,
        "read {} files under {}",
        files.len(),
        src.display()
    );
    let v = violations(&files);
    assert!(v.is_empty(), "forbidden imports:\n  {}", v.join("\n  "));
}

#[test]
fn src_top_level_stays_small() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let top: Vec<String> = std::fs::read_dir(&src)
        .expect("src")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert!(
        top.len() <= 8,
        "{} files at the top of src/: {top:?}",
        top.len()
    );
    let main = std::fs::read_to_string(src.join("main.rs")).expect("main.rs");
    assert!(
        main.lines().count() < 200,
        "main.rs has {} lines",
        main.lines().count()
    );
}

#[cfg(test)]
mod checker {
    use super::*;

    fn file(module: &str, text: &str) -> SourceFile {
        SourceFile {
            module: module
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            path: PathBuf::from(format!("{}.rs", module.replace("::", "/"))),
            text: text.to_owned(),
        }
    }

    #[test]
    fn a_detector_importing_a_source_is_caught() {
        let files = [
            file("detect::cusum", "use crate::{model::Ts, source::Traffic};"),
            file("source", "use crate::model::Ts;"),
            file("model", ""),
        ];
        assert_eq!(
            violations(&files),
            vec!["detect → source (in detect/cusum.rs)"]
        );
    }

    #[test]
    fn cycles_through_super_and_nested_groups_are_caught() {
        let files = [
            file(
                "sim::serve",
                "use super::super::{report::{html, svg}, model};",
            ),
            file("report", "#[serde(with = \"crate::sim::serde\")]"),
            file("model", ""),
        ];
        assert_eq!(violations(&files), vec!["import cycle between report, sim"]);
    }

    #[test]
    fn comments_and_strings_are_not_imports() {
        let files = [
            file(
                "detect",
                "// crate::source\nlet s = \"a \\\" crate::app\"; /// crate::app",
            ),
            file("source", ""),
            file("app", ""),
        ];
        assert!(violations(&files).is_empty());
    }

    #[test]
    fn io_in_protocol_is_caught() {
        let files = [file(
            "protocol::registers",
            "let t = std::fs::read_to_string(p)?;",
        )];
        assert_eq!(
            violations(&files),
            vec![
                "protocol does I/O: `std::fs` in protocol/registers.rs",
                "protocol does I/O: `read_to_string` in protocol/registers.rs"
            ]
        );
    }
}
