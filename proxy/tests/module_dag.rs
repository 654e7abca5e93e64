//! The modules of `proxy/src` form a strict DAG: no file imports, directly or through others, a file
//! that imports it back, and no top-level module of the crate does either.
//!
//! Every file reachable from `lib.rs` by `mod` declarations (test modules under `#[cfg(test)]` left out)
//! is parsed with `syn`; its `use crate::..` / `super::..` / `self::..` / child-module imports and the
//! `crate::a::b` / `super::..` paths in its code are resolved to the file that defines the name. A name
//! reached through a re-export (`pub use`) is followed to the file that defines it. A re-export is itself
//! an import of the re-exporting file, except a module's face handing on its own children's names
//! (`pub use child::X` in `mod.rs`): children may use what their parent defines without a cycle through
//! the parent's re-exports of them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::TokenTree;
use syn::visit::Visit;

/// A module path below the crate root (`["control", "exec"]`); the root is `[]`.
type ModPath = Vec<String>;

/// One file of the crate as the check sees it.
#[derive(Debug, Default)]
struct FileInfo {
    /// Names defined in each module that lives in this file (the file's own and inline ones).
    defs: BTreeMap<ModPath, BTreeSet<String>>,
    /// Re-exports (`pub use`): (module, name) -> the path it stands for (absolute).
    reexports: BTreeMap<(ModPath, String), ModPath>,
    /// Glob re-exports (`pub use x::*`) per module.
    globs: BTreeMap<ModPath, Vec<ModPath>>,
    /// Absolute paths this file refers to (imports and paths in code).
    refs: BTreeSet<ModPath>,
}

/// The crate's files and modules.
#[derive(Debug, Default)]
struct Crate {
    /// File (relative to the source dir) -> what it holds.
    files: BTreeMap<String, FileInfo>,
    /// Every module (file or inline) -> the file it lives in.
    modules: BTreeMap<ModPath, String>,
}

/// `#[cfg(test)]` (or any cfg that names `test` outside a `not(..)`): the item exists only in unit tests.
fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    fn names_test(tokens: proc_macro2::TokenStream) -> bool {
        let mut tokens = tokens.into_iter();
        while let Some(token) = tokens.next() {
            match token {
                TokenTree::Ident(i) if i == "not" => {
                    tokens.next();
                }
                TokenTree::Ident(i) if i == "test" => return true,
                TokenTree::Group(g) if names_test(g.stream()) => return true,
                _ => {}
            }
        }
        false
    }
    attrs.iter().any(|a| a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| names_test(l.tokens.clone())))
}

fn path_attr(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| {
        if !a.path().is_ident("path") {
            return None;
        }
        match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        }
    })
}

/// Resolves the leading segments of a path written in module `here` to an absolute path;
/// `None` for paths outside the crate (std, dependencies, local names).
fn absolutize(here: &ModPath, segs: &[String], children: &BTreeSet<String>) -> Option<ModPath> {
    let mut out: ModPath;
    let mut rest = segs;
    match segs.first().map(String::as_str) {
        Some("crate") => {
            out = Vec::new();
            rest = &segs[1..];
        }
        Some("self") => {
            out = here.clone();
            rest = &segs[1..];
        }
        Some("super") => {
            out = here.clone();
            while rest.first().map(String::as_str) == Some("super") {
                out.pop()?;
                rest = &rest[1..];
            }
        }
        Some(first) if children.contains(first) => out = here.clone(),
        _ => return None,
    }
    out.extend(rest.iter().cloned());
    Some(out)
}

/// Collects definitions, re-exports and references of one file.
struct Collector<'a> {
    /// Current module (changes inside inline modules).
    here: ModPath,
    info: &'a mut FileInfo,
    /// Child modules of each module of this file (for 2018-style relative paths).
    children: &'a BTreeMap<ModPath, BTreeSet<String>>,
}

impl Collector<'_> {
    fn children_here(&self) -> BTreeSet<String> {
        self.children.get(&self.here).cloned().unwrap_or_default()
    }

    fn define(&mut self, name: String) {
        self.info.defs.entry(self.here.clone()).or_default().insert(name);
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree, public: bool) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree, public);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                let full: Vec<String> = if name == "self" {
                    prefix.clone()
                } else {
                    prefix.iter().cloned().chain([name.clone()]).collect()
                };
                let alias = if name == "self" { prefix.last().cloned().unwrap_or_default() } else { name };
                self.import(full, alias, public);
            }
            syn::UseTree::Rename(r) => {
                let name = r.ident.to_string();
                let full: Vec<String> =
                    if name == "self" { prefix.clone() } else { prefix.iter().cloned().chain([name]).collect() };
                self.import(full, r.rename.to_string(), public);
            }
            syn::UseTree::Glob(_) => {
                if let Some(abs) = absolutize(&self.here, prefix, &self.children_here()) {
                    if public {
                        self.info.globs.entry(self.here.clone()).or_default().push(abs.clone());
                    }
                    self.info.refs.insert(abs);
                }
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t, public);
                }
            }
        }
    }

    fn import(&mut self, full: Vec<String>, alias: String, public: bool) {
        let Some(abs) = absolutize(&self.here, &full, &self.children_here()) else {
            return;
        };
        // A module's face handing on its own children's names depends on nothing by it; any other
        // import (a re-export of a name from elsewhere included) is a dependency of this file.
        let from_own_child = abs.len() > self.here.len() + 1 && abs.starts_with(&self.here);
        if public {
            self.info.reexports.insert((self.here.clone(), alias), abs.clone());
        }
        if !(public && from_own_child) {
            self.info.refs.insert(abs);
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Type(t) => &t.attrs,
            _ => &[],
        };
        if is_cfg_test(attrs) {
            return;
        }
        match item {
            syn::Item::Use(u) => {
                let public = !matches!(u.vis, syn::Visibility::Inherited);
                self.use_tree(&mut Vec::new(), &u.tree, public);
                return;
            }
            syn::Item::Mod(m) => {
                self.define(m.ident.to_string());
                if let Some((_, items)) = &m.content {
                    self.here.push(m.ident.to_string());
                    for i in items {
                        self.visit_item(i);
                    }
                    self.here.pop();
                }
                return;
            }
            syn::Item::Fn(f) => self.define(f.sig.ident.to_string()),
            syn::Item::Struct(s) => self.define(s.ident.to_string()),
            syn::Item::Enum(e) => self.define(e.ident.to_string()),
            syn::Item::Const(c) => self.define(c.ident.to_string()),
            syn::Item::Static(s) => self.define(s.ident.to_string()),
            syn::Item::Trait(t) => self.define(t.ident.to_string()),
            syn::Item::Type(t) => self.define(t.ident.to_string()),
            syn::Item::Union(u) => self.define(u.ident.to_string()),
            syn::Item::Macro(m) => {
                if let Some(id) = &m.ident {
                    self.define(id.to_string());
                }
            }
            _ => {}
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if segs.len() > 1 || matches!(segs.first().map(String::as_str), Some("crate" | "super")) {
            if let Some(abs) = absolutize(&self.here, &segs, &self.children_here()) {
                if abs != self.here {
                    self.info.refs.insert(abs);
                }
            }
        }
        syn::visit::visit_path(self, path);
    }

    /// `pub(crate)` / `pub(super)` / `pub(in ..)` name who may see an item, not what it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Paths inside macro arguments (format!, matches!, ...) are parsed as expressions when they can be.
        if let Ok(args) =
            mac.parse_body_with(syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated)
        {
            for e in &args {
                self.visit_expr(e);
            }
        }
        syn::visit::visit_macro(self, mac);
    }
}

/// Child modules declared in a file (per module of the file), with the files they live in.
fn declared_modules(
    items: &[syn::Item],
    here: &ModPath,
    dir_of_children: &Path,
    file_dir: &Path,
    out_children: &mut BTreeMap<ModPath, BTreeSet<String>>,
    out_files: &mut Vec<(ModPath, PathBuf)>,
) {
    for item in items {
        let syn::Item::Mod(m) = item else { continue };
        if is_cfg_test(&m.attrs) {
            continue;
        }
        let name = m.ident.to_string();
        out_children.entry(here.clone()).or_default().insert(name.clone());
        let mut child = here.clone();
        child.push(name.clone());
        match &m.content {
            Some((_, inner)) => {
                declared_modules(inner, &child, &dir_of_children.join(&name), file_dir, out_children, out_files)
            }
            None => {
                let file = if let Some(p) = path_attr(&m.attrs) {
                    file_dir.join(p)
                } else if dir_of_children.join(format!("{name}.rs")).exists() {
                    dir_of_children.join(format!("{name}.rs"))
                } else {
                    dir_of_children.join(&name).join("mod.rs")
                };
                out_files.push((child, file));
            }
        }
    }
}

/// Reads the crate whose root is `src/lib.rs`.
fn read_crate(src: &Path) -> Crate {
    let mut krate = Crate::default();
    let mut queue: Vec<(ModPath, PathBuf)> = vec![(Vec::new(), src.join("lib.rs"))];
    while let Some((module, file)) = queue.pop() {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let rel = file.strip_prefix(src).unwrap().to_string_lossy().into_owned();
        let file_dir = file.parent().unwrap().to_path_buf();
        let owns_dir = module.is_empty() || file.file_name().is_some_and(|n| n == "mod.rs");
        let children_dir = if owns_dir { file_dir.clone() } else { file_dir.join(file.file_stem().unwrap()) };
        let mut children = BTreeMap::new();
        let mut files = Vec::new();
        declared_modules(&ast.items, &module, &children_dir, &file_dir, &mut children, &mut files);
        let mut inline: Vec<ModPath> = children
            .iter()
            .flat_map(|(parent, names)| names.iter().map(move |n| parent.iter().cloned().chain([n.clone()]).collect()))
            .filter(|m: &ModPath| !files.iter().any(|(f, _)| f == m))
            .collect();
        inline.push(module.clone());
        for m in inline {
            krate.modules.insert(m, rel.clone());
        }
        let mut info = FileInfo::default();
        let mut collector = Collector { here: module.clone(), info: &mut info, children: &children };
        for item in &ast.items {
            collector.visit_item(item);
        }
        krate.files.insert(rel, info);
        queue.extend(files);
    }
    krate
}

impl Crate {
    /// The file that defines what `path` names, following re-exports.
    fn resolve(&self, path: &[String], depth: usize) -> Option<String> {
        if depth > 16 {
            return None;
        }
        // The longest prefix that is a module.
        let mut n = path.len();
        while n > 0 && !self.modules.contains_key(&path[..n]) {
            n -= 1;
        }
        let module: ModPath = path[..n].to_vec();
        let file = self.modules.get(&module)?.clone();
        let Some(name) = path.get(n) else { return Some(file) };
        let info = &self.files[&file];
        if info.defs.get(&module).is_some_and(|d| d.contains(name)) {
            return Some(file);
        }
        if let Some(target) = info.reexports.get(&(module.clone(), name.clone())) {
            let mut t = target.clone();
            t.extend(path[n + 1..].iter().cloned());
            return self.resolve(&t, depth + 1).or(Some(file));
        }
        for glob in info.globs.get(&module).into_iter().flatten() {
            let mut t = glob.clone();
            t.extend(path[n..].iter().cloned());
            if let Some(f) = self.resolve(&t, depth + 1) {
                if self.modules.get(glob) != Some(&f) || self.defines(glob, name) {
                    return Some(f);
                }
            }
        }
        Some(file)
    }

    fn defines(&self, module: &ModPath, name: &str) -> bool {
        self.modules
            .get(module)
            .and_then(|f| self.files.get(f))
            .and_then(|i| i.defs.get(module))
            .is_some_and(|d| d.contains(name))
    }

    /// File -> files it depends on (itself excluded) -> the paths by which it does.
    fn file_graph(&self) -> Labelled {
        let mut g = Labelled::new();
        for (file, info) in &self.files {
            let deps = g.entry(file.clone()).or_default();
            for r in &info.refs {
                if let Some(target) = self.resolve(r, 0) {
                    if &target != file {
                        deps.entry(target).or_default().insert(format!("crate::{}", r.join("::")));
                    }
                }
            }
        }
        g
    }
}

/// A graph whose arrows carry the paths behind them.
type Labelled = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn unlabelled(g: &Labelled) -> Graph {
    g.iter().map(|(from, deps)| (from.clone(), deps.keys().cloned().collect())).collect()
}

/// The cycle with what ties each arrow, one arrow a line.
fn describe(cycle: &[String], g: &Labelled) -> String {
    cycle
        .windows(2)
        .map(|w| {
            let names = g.get(&w[0]).and_then(|d| d.get(&w[1])).map(|n| n.iter().cloned().collect::<Vec<_>>());
            format!("  {} -> {}: {}", w[0], w[1], names.unwrap_or_default().join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level module a file belongs to (`lib.rs` is the crate root, left out).
fn top_module(file: &str) -> Option<String> {
    if file == "lib.rs" {
        return None;
    }
    let first = file.split('/').next().unwrap();
    Some(first.trim_end_matches(".rs").to_string())
}

fn module_graph(files: &Labelled) -> Labelled {
    let mut g = Labelled::new();
    for (from, deps) in files {
        let Some(a) = top_module(from) else { continue };
        let entry = g.entry(a.clone()).or_default();
        for (to, names) in deps {
            if let Some(b) = top_module(to) {
                if b != a {
                    entry.entry(b).or_default().extend(names.iter().map(|n| format!("{from} -> {to}: {n}")));
                }
            }
        }
    }
    g
}

/// One cycle of the graph, if it has any (depth-first search, nodes in name order).
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn dfs(g: &Graph, n: &str, marks: &mut BTreeMap<String, Mark>, stack: &mut Vec<String>) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match marks.get(m) {
                Some(Mark::Open) => {
                    let start = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(c) = dfs(g, m, marks, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if !marks.contains_key(n) {
            if let Some(c) = dfs(g, n, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn proxy_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn file_graph_of_proxy_src_has_no_cycle() {
    let krate = read_crate(&proxy_src());
    assert!(krate.files.len() > 50, "only {} files read", krate.files.len());
    let g = krate.file_graph();
    if let Some(cycle) = find_cycle(&unlabelled(&g)) {
        panic!("import cycle between files of proxy/src:\n{}", describe(&cycle, &g));
    }
}

#[test]
fn top_level_module_graph_of_proxy_src_has_no_cycle() {
    let g = module_graph(&read_crate(&proxy_src()).file_graph());
    if let Some(cycle) = find_cycle(&unlabelled(&g)) {
        panic!("import cycle between top-level modules of proxy/src:\n{}", describe(&cycle, &g));
    }
}

/// Writes a tiny crate into a temporary directory.
fn synthetic_crate(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

#[test]
fn check_names_the_cycle_of_a_synthetic_crate() {
    let dir = synthetic_crate(&[
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        ("a.rs", "use crate::b::B;\npub struct A;\n"),
        ("b.rs", "pub struct B;\npub fn f() -> crate::c::C { crate::c::C }\n"),
        ("c/mod.rs", "mod inner;\npub use inner::C;\n"),
        ("c/inner.rs", "pub struct C;\nfn g(_: super::super::a::A) {}\n"),
    ]);
    let g = read_crate(dir.path()).file_graph();
    let cycle = find_cycle(&unlabelled(&g)).unwrap();
    assert_eq!(describe(&cycle, &g).lines().next().unwrap(), "  a.rs -> b.rs: crate::b::B");
    assert_eq!(cycle, ["a.rs", "b.rs", "c/inner.rs", "a.rs"].map(String::from).to_vec());
    assert_eq!(find_cycle(&unlabelled(&module_graph(&g))).unwrap(), ["a", "b", "c", "a"].map(String::from).to_vec());
}

#[test]
fn check_passes_a_synthetic_dag_whose_face_re_exports_its_children() {
    let dir = synthetic_crate(&[
        ("lib.rs", "pub mod a;\npub mod b;\n"),
        ("a/mod.rs", "mod x;\nmod y;\npub use x::X;\npub use y::Y;\n"),
        ("a/x.rs", "pub struct X;\n"),
        ("a/y.rs", "use super::X;\npub struct Y(X);\n#[cfg(test)]\nmod tests { use crate::b::B; }\n"),
        ("b.rs", "pub struct B(crate::a::Y);\n"),
    ]);
    let g = unlabelled(&read_crate(dir.path()).file_graph());
    assert_eq!(find_cycle(&g), None);
    assert_eq!(g["a/y.rs"], BTreeSet::from(["a/x.rs".to_string()]));
    assert_eq!(g["b.rs"], BTreeSet::from(["a/y.rs".to_string()]));
}
