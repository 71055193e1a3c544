//! The house in order: no module circle in any crate, and no async runtime or gRPC/HTTP stack in a core
//! module (docs/design.md, "Layout"). Reads the source tree; builds and starts nothing.

use std::path::{Path, PathBuf};

use ferry_tests::layout::Crate;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

/// Every crate root of the workspace (a library's lib.rs, a binary's main.rs when it has modules).
const CRATES: &[&str] = &[
    "protocol/src/lib.rs",
    "storage/src/lib.rs",
    "broker/src/lib.rs",
    "client/src/lib.rs",
    "client/cli/src/main.rs",
    "tests/src/lib.rs",
    "tests/src/bin/ferry-chaos/main.rs",
];

/// The cores: module prefixes (per crate root) that hold decisions and formats, never I/O runtimes.
const CORES: &[(&str, &[&[&str]])] = &[
    ("storage/src/lib.rs", &[&[]]),
    (
        "protocol/src/lib.rs",
        &[
            &["batch"],
            &["stamp"],
            &["partitioner"],
            &["topic"],
            &["limits"],
        ],
    ),
    (
        "broker/src/lib.rs",
        &[
            &["groups"],
            &["metadata"],
            &["replica", "types"],
            &["replica", "raft_log"],
            &["replica", "lease"],
            &["replica", "liveness"],
            &["replica", "core"],
        ],
    ),
];

/// Each crate's top-level modules, lower layers first: a module imports only modules before it (or
/// itself). The crate's `lib.rs` map lists them in this order.
const LAYERS: &[(&str, &[&str])] = &[(
    "broker/src/lib.rs",
    &[
        "acl",
        "quota",
        "groups",
        "replica",
        "identity",
        "tls",
        "jwt",
        "metadata",
        "peer",
        "membership",
        "config",
        "settings",
        "views",
        "broker",
        "server",
    ],
)];

fn relative(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

#[test]
fn no_crate_has_a_module_circle() {
    let mut found = Vec::new();
    for c in CRATES {
        let krate = Crate::read(&root().join(c)).expect("the crate's source reads");
        let imports = krate.imports();
        for circle in krate.circles() {
            let files: Vec<String> = circle.iter().map(|p| relative(p)).collect();
            found.push(format!("{c}: {} files: {}", files.len(), files.join(", ")));
            for (a, b) in &imports {
                if circle.contains(a) && circle.contains(b) {
                    found.push(format!("  {} -> {}", relative(a), relative(b)));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "module circles (files that import each other in a loop; break them by moving the shared \
         thing down a layer):\n{}",
        found.join("\n")
    );
}

#[test]
fn no_core_module_imports_a_runtime() {
    let mut found = Vec::new();
    for (c, prefixes) in CORES {
        let krate = Crate::read(&root().join(c)).expect("the crate's source reads");
        for prefix in *prefixes {
            for (file, name) in krate.runtime_imports(prefix) {
                found.push(format!("{} uses {name}", relative(&file)));
            }
        }
    }
    assert!(
        found.is_empty(),
        "core modules must stay free of tokio, tonic and axum (I/O belongs in the shell):\n{}",
        found.join("\n")
    );
}

#[test]
fn no_module_imports_a_higher_layer() {
    let mut found = Vec::new();
    for (c, layers) in LAYERS {
        let krate = Crate::read(&root().join(c)).expect("the crate's source reads");
        let rank = |m: &str| layers.iter().position(|l| *l == m);
        for (a, b) in krate.top_level_imports() {
            match (rank(&a), rank(&b)) {
                (Some(ra), Some(rb)) if ra < rb => {
                    found.push(format!("{c}: {a} imports {b}, a higher layer"))
                }
                (None, _) | (_, None) => {
                    found.push(format!("{c}: {a} -> {b}: add the module to LAYERS"))
                }
                _ => {}
            }
        }
    }
    assert!(
        found.is_empty(),
        "layering broken (a lower layer must not import a higher one):\n{}",
        found.join("\n")
    );
}

/// Longest source file (lines): past it, a file holds more than one concept (docs/design.md, "Layout").
const FILE_LINES_MAX: usize = 800;

#[test]
fn no_source_file_is_over_the_line_limit() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("the tree reads").flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    walk(&p, out);
                }
            } else if name.ends_with(".rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    for top in [
        "protocol", "storage", "broker", "client", "benches", "tests", "fuzz",
    ] {
        walk(&root().join(top), &mut files);
    }
    assert!(files.len() > 50, "the source tree was not found");
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > FILE_LINES_MAX).then(|| format!("{} has {n} lines", relative(f)))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {FILE_LINES_MAX} lines (split them by concept):\n{}",
        long.join("\n")
    );
}
