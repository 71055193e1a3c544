//! The layout check: reads a crate's source tree and finds the module circles in it (files that import
//! each other in a loop) and the core modules that import an async runtime or a gRPC/HTTP stack.
//!
//! It reads Rust source as text, not through the compiler: `use` statements (braces expanded) and paths in
//! code that start with `crate::`, `super::`, `self::` or a child module's name. A name re-exported by a
//! module (`pub use x::Name`) is followed to the file that defines it, so a `mod.rs` that only hands names
//! on does not tie its children into a circle. Test code (`tests.rs`, `*_tests.rs`, `#[cfg(test)] mod`
//! blocks) is left out: a test may import anything it tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// One module file of a crate: its module path (empty for the crate root) and its code, comments and
/// test blocks removed.
#[derive(Debug)]
struct Module {
    file: PathBuf,
    code: String,
}

/// The modules of one crate, by module path (`["replica", "driver"]`).
#[derive(Debug)]
pub struct Crate {
    modules: BTreeMap<Vec<String>, Module>,
}

/// Crates that never appear in a core module: an async runtime, a gRPC stack, an HTTP server.
pub const NOT_IN_A_CORE: &[&str] = &["tokio", "tokio_util", "tokio_stream", "tonic", "axum"];

impl Crate {
    /// Reads the crate whose root file is `root` (`src/lib.rs`, or `src/main.rs` for a binary crate).
    pub fn read(root: &Path) -> std::io::Result<Crate> {
        let src = root.parent().expect("a root file sits in a directory");
        let mut modules = BTreeMap::new();
        modules.insert(
            Vec::new(),
            Module {
                file: root.to_owned(),
                code: strip(&std::fs::read_to_string(root)?),
            },
        );
        let mut files = Vec::new();
        collect(src, &mut files)?;
        for f in files {
            let rel = f.strip_prefix(src).expect("under src");
            let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if f == root
                || name == "lib.rs"
                || name == "main.rs"
                || name == "tests.rs"
                || name.ends_with("_tests.rs")
                || rel.components().any(|c| c.as_os_str() == "bin")
            {
                continue;
            }
            let mut path: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if path.last().is_some_and(|l| l == "mod") {
                path.pop();
            }
            modules.insert(
                path,
                Module {
                    file: f.clone(),
                    code: strip(&std::fs::read_to_string(&f)?),
                },
            );
        }
        Ok(Crate { modules })
    }

    /// The file → file imports of the crate (by file path, each edge once).
    pub fn imports(&self) -> BTreeSet<(PathBuf, PathBuf)> {
        let exports = self.reexports();
        let mut edges = BTreeSet::new();
        for (at, m) in &self.modules {
            for path in referenced_paths(&m.code, &self.children(at)) {
                if let Some(target) = self.resolve(at, &path, &exports, 0) {
                    if &target != at {
                        edges.insert((m.file.clone(), self.modules[&target].file.clone()));
                    }
                }
            }
        }
        edges
    }

    /// The imports between the crate's top-level modules (`"broker" -> "replica"`), each once; the
    /// crate root is `""`.
    pub fn top_level_imports(&self) -> BTreeSet<(String, String)> {
        let top: HashMap<&PathBuf, String> = self
            .modules
            .iter()
            .map(|(path, m)| (&m.file, path.first().cloned().unwrap_or_default()))
            .collect();
        self.imports()
            .iter()
            .map(|(a, b)| (top[a].clone(), top[b].clone()))
            .filter(|(a, b)| a != b && !a.is_empty() && !b.is_empty())
            .collect()
    }

    /// Every circle of files that import each other, each sorted, biggest first.
    pub fn circles(&self) -> Vec<Vec<PathBuf>> {
        let edges = self.imports();
        let mut out: Vec<Vec<PathBuf>> = strongly_connected(&edges)
            .into_iter()
            .filter(|c| c.len() > 1)
            .collect();
        out.sort_by_key(|c| std::cmp::Reverse(c.len()));
        out
    }

    /// Files of the modules under `prefix` (a module path; empty for the whole crate) that name one of
    /// [`NOT_IN_A_CORE`], with the name.
    pub fn runtime_imports(&self, prefix: &[&str]) -> Vec<(PathBuf, &'static str)> {
        let mut out = Vec::new();
        for (at, m) in &self.modules {
            if at.len() < prefix.len() || at.iter().zip(prefix).any(|(a, b)| a != b) {
                continue;
            }
            for name in NOT_IN_A_CORE {
                if mentions_crate(&m.code, name) {
                    out.push((m.file.clone(), *name));
                }
            }
        }
        out
    }

    fn children(&self, at: &[String]) -> BTreeSet<String> {
        self.modules
            .keys()
            .filter(|k| k.len() == at.len() + 1 && k.starts_with(at))
            .map(|k| k[at.len()].clone())
            .collect()
    }

    /// Per module, the names it re-exports and the full path (as written there) each stands for.
    fn reexports(&self) -> HashMap<Vec<String>, HashMap<String, Vec<String>>> {
        let mut out: HashMap<Vec<String>, HashMap<String, Vec<String>>> = HashMap::new();
        for (at, m) in &self.modules {
            for stmt in use_statements(&m.code, true) {
                for (path, alias) in expand(&stmt) {
                    let name = alias.unwrap_or_else(|| path.last().cloned().unwrap_or_default());
                    if name != "*" && name != "self" {
                        out.entry(at.clone()).or_default().insert(name, path);
                    }
                }
            }
        }
        out
    }

    /// The module a path written in module `at` lands in, following re-exports; `None` for another crate.
    fn resolve(
        &self,
        at: &[String],
        path: &[String],
        exports: &HashMap<Vec<String>, HashMap<String, Vec<String>>>,
        depth: usize,
    ) -> Option<Vec<String>> {
        if depth > 8 || path.is_empty() {
            return None;
        }
        let (mut cur, mut rest): (Vec<String>, &[String]) = match path[0].as_str() {
            "crate" => (Vec::new(), &path[1..]),
            "self" => (at.to_vec(), &path[1..]),
            "super" => {
                let mut base = at.to_vec();
                let mut i = 0;
                while path.get(i).is_some_and(|s| s == "super") {
                    base.pop();
                    i += 1;
                }
                (base, &path[i..])
            }
            first
                if self
                    .modules
                    .contains_key(&[at, &[first.to_owned()]].concat()) =>
            {
                (at.to_vec(), path)
            }
            _ => return None,
        };
        while let Some(seg) = rest.first() {
            let next = [cur.as_slice(), std::slice::from_ref(seg)].concat();
            if self.modules.contains_key(&next) {
                cur = next;
                rest = &rest[1..];
            } else {
                break;
            }
        }
        if let Some(name) = rest.first() {
            if let Some(target) = exports.get(&cur).and_then(|e| e.get(name)) {
                if let Some(found) = self.resolve(&cur, target, exports, depth + 1) {
                    return Some(found);
                }
            }
        }
        Some(cur)
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// Source without comments, string literals and `#[cfg(test)]` modules.
fn strip(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
        } else if b[i] == b'"' {
            // A string literal: skipped (it may hold "crate::" in a message), escapes respected.
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            let c = src[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    cut_test_modules(&out)
}

/// Removes `#[cfg(test)] mod name { ... }` blocks (brace-balanced).
fn cut_test_modules(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_block = trimmed.starts_with("mod ")
            && trimmed
                .find(['{', ';'])
                .is_some_and(|p| trimmed.as_bytes()[p] == b'{');
        if !is_block {
            rest = after;
            continue;
        }
        let open = after.find('{').expect("checked");
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The `use` statements of `code` (text between `use` and `;`), only the `pub` ones if `public`.
fn use_statements(code: &str, public: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = find_word(rest, "use") {
        let before = rest[..at].trim_end();
        // `pub use` or `pub(crate) use` / `pub(super) use` / `pub(in path) use` right before the word.
        let is_pub = before.ends_with("pub")
            || before.ends_with(')')
                && before
                    .rsplit_once("pub(")
                    .is_some_and(|(_, inside)| !inside.contains(['(', ';', '{', '}']));
        let after = &rest[at + 3..];
        let Some(end) = after.find(';') else { break };
        if !public || is_pub {
            out.push(after[..end].trim().to_owned());
        }
        rest = &after[end..];
    }
    out
}

/// Where the word `w` stands on its own in `s`.
fn find_word(s: &str, w: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(p) = s[from..].find(w) {
        let at = from + p;
        let ok_before = at == 0 || !is_ident(b[at - 1]);
        let ok_after = at + w.len() >= b.len() || !is_ident(b[at + w.len()]);
        if ok_before && ok_after {
            return Some(at);
        }
        from = at + w.len();
    }
    None
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// A `use` tree expanded into its paths, each with its `as` alias.
fn expand(tree: &str) -> Vec<(Vec<String>, Option<String>)> {
    let mut out = Vec::new();
    expand_into(&[], tree.trim(), &mut out);
    out
}

fn expand_into(prefix: &[String], tree: &str, out: &mut Vec<(Vec<String>, Option<String>)>) {
    let tree = tree.trim().trim_start_matches("::");
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = segments(&tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let base = [prefix, &head].concat();
        for part in split_top(inner) {
            if part.trim() == "self" {
                out.push((base.clone(), None));
            } else if !part.trim().is_empty() {
                expand_into(&base, part, out);
            }
        }
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((p, a)) => (p, Some(a.trim().to_owned())),
        None => (tree, None),
    };
    out.push(([prefix, &segments(path)].concat(), alias));
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Splits at commas outside braces.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Every path the code uses that may land in this crate: all `use` paths, and paths in code that start
/// with `crate`, `super`, `self` or one of `children` (child modules are named without a prefix).
fn referenced_paths(code: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = use_statements(code, false)
        .iter()
        .flat_map(|s| expand(s).into_iter().map(|(p, _)| p))
        .collect();
    let b = code.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if is_ident(b[i]) && (i == 0 || (!is_ident(b[i - 1]) && b[i - 1] != b':')) {
            let start = i;
            while i < b.len() && (is_ident(b[i]) || b[i..].starts_with(b"::")) {
                i += if b[i] == b':' { 2 } else { 1 };
            }
            let path = segments(&code[start..i]);
            let first = path.first().map(String::as_str).unwrap_or("");
            if path.len() > 1
                && (matches!(first, "crate" | "super" | "self") || children.contains(first))
            {
                out.push(path);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Whether `code` names the crate `name` (`use name::`, `name::` in a path, or `extern crate name`).
fn mentions_crate(code: &str, name: &str) -> bool {
    let b = code.as_bytes();
    let mut from = 0;
    while let Some(p) = code[from..].find(name) {
        let at = from + p;
        let end = at + name.len();
        let before_ok = at == 0 || (!is_ident(b[at - 1]) && b[at - 1] != b':');
        // `tokio::…` anywhere, or the crate itself named by a `use` (`use tokio as rt;`, `use tokio;`).
        let after_ident = b.get(end).is_some_and(|c| is_ident(*c));
        let by_use = code[..at].trim_end().ends_with("use") && !after_ident;
        if before_ok && (code[end..].starts_with("::") || by_use) {
            return true;
        }
        from = end;
    }
    false
}

#[cfg(test)]
mod mention_tests {
    use super::mentions_crate;

    #[test]
    fn a_crate_is_mentioned_by_a_path_or_a_use_of_it() {
        for (code, yes) in [
            ("use tokio::sync::mpsc;", true),
            ("let x = tokio::spawn(f);", true),
            ("use tokio as rt;", true),
            ("use tokio;", true),
            ("use tokio_util::sync::CancellationToken;", false),
            ("use my_tokio::x;", false),
            ("let tokio = 1;", false),
            ("use crate::tokio_free::x;", false),
        ] {
            assert_eq!(mentions_crate(code, "tokio"), yes, "{code}");
        }
    }
}

/// Tarjan's strongly connected components of the import graph.
fn strongly_connected(edges: &BTreeSet<(PathBuf, PathBuf)>) -> Vec<Vec<PathBuf>> {
    let mut adj: BTreeMap<&PathBuf, Vec<&PathBuf>> = BTreeMap::new();
    for (a, b) in edges {
        adj.entry(a).or_default().push(b);
        adj.entry(b).or_default();
    }
    struct State<'a> {
        index: HashMap<&'a PathBuf, usize>,
        low: HashMap<&'a PathBuf, usize>,
        on_stack: BTreeSet<&'a PathBuf>,
        stack: Vec<&'a PathBuf>,
        next: usize,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(v: &'a PathBuf, adj: &BTreeMap<&'a PathBuf, Vec<&'a PathBuf>>, s: &mut State<'a>) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &adj[v] {
            if !s.index.contains_key(w) {
                visit(w, adj, s);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            comp.sort();
            s.out.push(comp);
        }
    }
    let mut s = State {
        index: HashMap::new(),
        low: HashMap::new(),
        on_stack: BTreeSet::new(),
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    let nodes: Vec<&PathBuf> = adj.keys().copied().collect();
    for v in nodes {
        if !s.index.contains_key(v) {
            visit(v, &adj, &mut s);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, Crate) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join("src").join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let c = Crate::read(&dir.path().join("src/lib.rs")).unwrap();
        (dir, c)
    }

    fn names(circles: &[Vec<PathBuf>]) -> Vec<Vec<String>> {
        circles
            .iter()
            .map(|c| {
                c.iter()
                    .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn finds_a_circle_through_use_and_inline_paths() {
        let (_d, c) = tree(&[
            ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
            ("a.rs", "use crate::b::{Thing, other::{X as Y}};\n"),
            ("b.rs", "pub fn f() { crate::c::g(); }\n"),
            // In a comment or a string it is no import: only the code's path counts.
            (
                "c.rs",
                "// crate::b::f\nfn g() { let _ = \"crate::b\"; super::a::h() }\n",
            ),
        ]);
        assert_eq!(names(&c.circles()), vec![vec!["a.rs", "b.rs", "c.rs"]]);
    }

    #[test]
    fn a_mod_rs_that_only_reexports_ties_no_circle() {
        let (_d, c) = tree(&[
            ("lib.rs", "pub mod m;\n"),
            ("m/mod.rs", "mod x;\nmod y;\npub use x::X;\npub use y::Y;\n"),
            ("m/x.rs", "pub struct X;\n"),
            ("m/y.rs", "use super::X;\npub struct Y;\n"),
        ]);
        assert!(c.circles().is_empty(), "{:?}", c.circles());
        // But a child using a name the parent itself defines, while the parent uses the child, is one.
        let (_d, c) = tree(&[
            ("lib.rs", "pub mod m;\n"),
            ("m/mod.rs", "mod y;\npub struct Z;\nfn f() { y::g() }\n"),
            ("m/y.rs", "use super::Z;\npub fn g() {}\n"),
        ]);
        assert_eq!(names(&c.circles()), vec![vec!["mod.rs", "y.rs"]]);
    }

    #[test]
    fn test_code_is_left_out() {
        let (_d, c) = tree(&[
            ("lib.rs", "pub mod a;\npub mod b;\n"),
            ("a.rs", "pub fn f() { crate::b::g() }\n"),
            (
                "b.rs",
                "pub fn g() {}\n#[cfg(test)]\nmod tests {\n use crate::a::f;\n}\n",
            ),
        ]);
        assert!(c.circles().is_empty());
    }

    #[test]
    fn finds_a_runtime_in_a_core_module() {
        let (_d, c) = tree(&[
            ("lib.rs", "pub mod core;\npub mod shell;\n"),
            ("core/mod.rs", "pub mod inner;\n"),
            ("core/inner.rs", "fn f() { tokio::spawn(async {}); }\n"),
            ("shell.rs", "use tonic::Status;\n"),
        ]);
        let found = c.runtime_imports(&["core"]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1, "tokio");
        // `my_tokio::` or `x::tokio::` is not the crate.
        let (_d, c) = tree(&[
            ("lib.rs", "pub mod core;\n"),
            (
                "core.rs",
                "fn f() { my_tokio::spawn(); crate::tokio::x(); }\n",
            ),
        ]);
        assert!(c.runtime_imports(&["core"]).is_empty());
    }
}
