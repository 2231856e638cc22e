//! eda-core's modules import each other in one direction only: no circle
//! (issue 13). Read from the sources, as text: every `crate::…` path in
//! code (not in comments), a private child's `super::…` (the same module)
//! and a public child's (its parent), and the root's re-exports, which a
//! `crate::Name` goes through.
//!
//! A module is a file, or a directory whose children are private (`bus/`:
//! one module cut into files); a directory that declares its children
//! `pub mod` (`adapters/`, `entrypoints/`) is a namespace of modules, one
//! per file. `lib.rs` is the root and only re-exports.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module's id: `handler`, `bus`, `adapters/rabbitmq`, `adapters`.
type Module = String;

struct Crate {
    /// Each module, with the files that make it.
    modules: BTreeMap<Module, Vec<PathBuf>>,
    /// The directories that are namespaces (their children are modules).
    namespaces: BTreeSet<String>,
    /// What the root re-exports: a name, and the module it comes from.
    root: BTreeMap<String, Module>,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The code of a file without its comment lines and trailing comments.
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        // A trailing comment starts at ` //` (a URL's `://` does not).
        let line = line.find(" //").map_or(line, |at| &line[..at]);
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Parses the path tree at `s[*i..]` (`a::b::{c, d::e as f}`): every path
/// it names, after `prefix`.
fn tree(s: &[u8], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && s[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let mut path = prefix;
    loop {
        skip_ws(i);
        if *i < s.len() && s[*i] == b'{' {
            *i += 1;
            loop {
                skip_ws(i);
                if *i >= s.len() || s[*i] == b'}' {
                    *i += 1;
                    return;
                }
                tree(s, i, path.clone(), out);
                // Past an `as alias`, to the next item or the end.
                while *i < s.len() && s[*i] != b',' && s[*i] != b'}' {
                    *i += 1;
                }
                if *i < s.len() && s[*i] == b',' {
                    *i += 1;
                }
            }
        }
        let start = *i;
        while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == b'_') {
            *i += 1;
        }
        if *i == start {
            out.push(path);
            return;
        }
        path.push(String::from_utf8_lossy(&s[start..*i]).into_owned());
        if s[*i..].starts_with(b"::") {
            *i += 2;
        } else {
            out.push(path);
            return;
        }
    }
}

/// Every path that starts with `start` (`crate::`, `super::`) in `code`.
fn paths(code: &str, start: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(start) {
        let at = from + at;
        from = at + start.len();
        // `crate::` inside an identifier (`eda_crate::`) is not ours.
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        let mut i = from;
        tree(bytes, &mut i, Vec::new(), &mut out);
    }
    out
}

fn read_crate() -> Crate {
    let src = src();
    let mut modules: BTreeMap<Module, Vec<PathBuf>> = BTreeMap::new();
    let mut namespaces = BTreeSet::new();
    for entry in fs::read_dir(&src).expect("eda-core/src") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let parent = code(&path.join("mod.rs"));
            let public = parent
                .lines()
                .any(|l| l.trim_start().starts_with("pub mod "));
            if public {
                namespaces.insert(name.clone());
            }
            for child in fs::read_dir(&path).expect("a module directory") {
                let child = child.expect("a directory entry").path();
                let stem = child.file_stem().unwrap().to_string_lossy().into_owned();
                let module = if stem == "mod" || !public {
                    name.clone()
                } else {
                    format!("{name}/{stem}")
                };
                modules.entry(module).or_default().push(child);
            }
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" {
            modules.entry(name).or_default().push(path);
        }
    }
    let mut root = BTreeMap::new();
    for path in paths(&code(&src.join("lib.rs")), "pub use ") {
        if let (Some(first), Some(last)) = (path.first(), path.last())
            && modules.contains_key(first)
        {
            root.insert(last.clone(), first.clone());
        }
    }
    Crate {
        modules,
        namespaces,
        root,
    }
}

impl Crate {
    /// The module a `crate::…` path names, if it is one of this crate's.
    fn resolve(&self, path: &[String]) -> Option<Module> {
        let first = path.first()?;
        if self.namespaces.contains(first)
            && let Some(second) = path.get(1)
        {
            let child = format!("{first}/{second}");
            if self.modules.contains_key(&child) {
                return Some(child);
            }
        }
        if self.modules.contains_key(first) {
            return Some(first.clone());
        }
        self.root.get(first).cloned()
    }

    /// Who imports whom, with the paths that tie them.
    fn imports(&self) -> BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>> {
        let mut graph: BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>> = BTreeMap::new();
        for (module, files) in &self.modules {
            let edges = graph.entry(module.clone()).or_default();
            for file in files {
                let code = code(file);
                let mut targets = Vec::new();
                for path in paths(&code, "crate::") {
                    if let Some(to) = self.resolve(&path) {
                        targets.push((to, path.join("::")));
                    }
                }
                // A public child's `super` is its parent namespace's module.
                if let Some((parent, _)) = module.split_once('/') {
                    for path in paths(&code, "super::") {
                        targets.push((parent.to_owned(), format!("super::{}", path.join("::"))));
                    }
                }
                for (to, path) in targets {
                    if &to != module {
                        edges.entry(to).or_default().insert(path);
                    }
                }
            }
        }
        graph
    }
}

/// The circles of a graph: its strongly connected components of more than
/// one node (Tarjan).
fn circles(graph: &BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>>) -> Vec<Vec<Module>> {
    struct State<'g> {
        graph: &'g BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<Module>>,
    }
    fn visit<'g>(st: &mut State<'g>, v: &'g str) {
        let n = st.index.len();
        st.index.insert(v, n);
        st.low.insert(v, n);
        st.stack.push(v);
        st.on_stack.insert(v);
        for w in st.graph.get(v).into_iter().flat_map(|e| e.keys()) {
            if !st.index.contains_key(w.as_str()) {
                visit(st, w);
                let low = st.low[v].min(st.low[w.as_str()]);
                st.low.insert(v, low);
            } else if st.on_stack.contains(w.as_str()) {
                let low = st.low[v].min(st.index[w.as_str()]);
                st.low.insert(v, low);
            }
        }
        if st.low[v] == st.index[v] {
            let mut component = Vec::new();
            loop {
                let w = st.stack.pop().expect("on the stack");
                st.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                st.found.push(component);
            }
        }
    }
    let mut st = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !st.index.contains_key(v.as_str()) {
            visit(&mut st, v);
        }
    }
    st.found
}

#[test]
fn eda_core_s_modules_import_each_other_in_one_direction_only() {
    let krate = read_crate();
    let graph = krate.imports();
    // The reading itself: the modules the architecture names are there,
    // and known imports are seen (a reader that sees nothing finds no
    // circle either).
    for module in [
        "bus",
        "handler",
        "context",
        "uow",
        "registry",
        "adapters/rabbitmq",
        "entrypoints/rabbitmq",
    ] {
        assert!(graph.contains_key(module), "module `{module}` not found");
    }
    assert!(
        graph["bus"].contains_key("handler"),
        "bus -> handler unseen"
    );
    assert!(graph["handler"].contains_key("context"));
    assert!(graph["entrypoints/rabbitmq"].contains_key("adapters/rabbitmq"));
    assert!(graph["causation"].contains_key("bus"));

    let found = circles(&graph);
    let described: Vec<String> = found
        .iter()
        .map(|circle| {
            let mut lines = vec![format!(
                "a circle of {}: {}",
                circle.len(),
                circle.join(", ")
            )];
            for from in circle {
                for (to, paths) in &graph[from] {
                    if circle.contains(to) {
                        let paths: Vec<_> = paths.iter().map(String::as_str).collect();
                        lines.push(format!("  {from} -> {to}: {}", paths.join(", ")));
                    }
                }
            }
            lines.join("\n")
        })
        .collect();
    assert!(
        found.is_empty(),
        "eda-core's modules import each other in a circle (ARCHITECTURE.md says which way each goes):\n{}",
        described.join("\n")
    );
}

#[test]
fn the_reader_finds_a_circle_where_there_is_one() {
    let mut graph: BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>> = BTreeMap::new();
    let mut edge = |a: &str, b: &str| {
        graph
            .entry(a.to_owned())
            .or_default()
            .insert(b.to_owned(), BTreeSet::new());
        graph.entry(b.to_owned()).or_default();
    };
    edge("bus", "handler");
    edge("handler", "context");
    edge("context", "bus");
    edge("bus", "retry");
    assert_eq!(
        circles(&graph),
        vec![vec![
            "bus".to_owned(),
            "context".to_owned(),
            "handler".to_owned()
        ]]
    );

    let mut out = Vec::new();
    let code = b"{a::B, c::{D, e::F as G}, H}";
    tree(code, &mut 0, vec!["crate".into()], &mut out);
    let joined: Vec<String> = out.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        ["crate::a::B", "crate::c::D", "crate::c::e::F", "crate::H"]
    );
}

#[test]
fn every_public_item_has_one_path() {
    // The root re-exports from private modules only: an item of a public
    // module (`adapters::postgres`, `host`) is named there and nowhere
    // else. (The prelude names the most used root items again, as std's
    // does.)
    let lib = code(&src().join("lib.rs"));
    let public: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("pub mod "))
        .map(|rest| rest.trim_end_matches([';', ' ', '{']).to_owned())
        .collect();
    assert!(public.contains("adapters") && public.contains("host"));
    // Whether `path` names an item through public modules only: the
    // first a public module of the root, and, in a module directory, the
    // next one declared `pub mod` there (or an item of the module itself).
    let reachable = |path: &[String]| {
        let Some(first) = path.first() else {
            return false;
        };
        if !public.contains(first) {
            return false;
        }
        let dir = src().join(first);
        match path.get(1) {
            Some(second) if dir.join(format!("{second}.rs")).exists() => {
                code(&dir.join("mod.rs")).lines().any(|l| {
                    l.trim_start()
                        .strip_prefix("pub mod ")
                        .is_some_and(|rest| rest.trim_end_matches(';') == second)
                })
            }
            _ => true,
        }
    };
    let twice: Vec<String> = paths(&lib, "pub use ")
        .into_iter()
        .filter(|path| reachable(path))
        .map(|path| path.join("::"))
        .collect();
    assert!(
        twice.is_empty(),
        "re-exported at the root from a public module, so at two paths: {twice:?}"
    );
}
