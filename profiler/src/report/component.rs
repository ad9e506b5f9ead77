//! Components: live bytes (`--alloc`) and held growth (`--memory`) grouped by the part of the
//! target they belong to, each against its budget (`--budget FILE`).
//!
//! A stack belongs to the budget file's component one of whose frame patterns matches its
//! leafmost frame that any pattern matches (so a parser inside connection handling is the
//! parser's); a stack no pattern matches belongs to its default component, taken from the
//! leafmost frame of the target's own code: a Rust (or C++) function's module path
//! (`testbed::pool::share_log`), a C function's object (the executable's name), else for a
//! stack wholly in shared libraries the leafmost library that is not the C runtime or the
//! allocator (`libssl.so.3`).

use std::{fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};

use super::{alloc::growth, findings::Finding, memory::bytes};

/// Components listed besides the budgeted ones, at most.
const LISTED: usize = 20;

/// A budget file: `[[component]]` tables, each a name, frame patterns and a byte budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// The file, as given.
    pub file: String,
    pub components: Vec<BudgetComponent>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetComponent {
    pub name: String,
    /// Frame names with `*` matching any run of characters (`testbed::pool::share_log::*`).
    /// None: the budget is for the default component of this name.
    #[serde(default)]
    pub frames: Vec<String>,
    /// Bytes: a number, or a string with a unit (`"512 KiB"`, `"4 MiB"`, `"1.5 GB"`).
    pub budget: ByteSize,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "ByteSizeText")]
pub struct ByteSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum ByteSizeText {
    Number(u64),
    Text(String),
}

impl TryFrom<ByteSizeText> for ByteSize {
    type Error = String;

    fn try_from(value: ByteSizeText) -> Result<Self, String> {
        match value {
            ByteSizeText::Number(n) => Ok(Self(n)),
            ByteSizeText::Text(text) => parse_bytes(&text).map(Self),
        }
    }
}

/// `"512 KiB"`, `"4MiB"`, `"1.5 GB"`, `"4096"`: binary and decimal units, case-insensitive.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a byte size such as \"512 KiB\""))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (B, KiB, MiB, GiB, kB, MB, GB)"
            ));
        }
    };
    Ok((number * scale).round() as u64)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetFile {
    #[serde(default, rename = "component")]
    components: Vec<BudgetComponent>,
}

impl Budget {
    pub fn parse(file: &str, text: &str) -> Result<Self, String> {
        let parsed: BudgetFile = toml::from_str(text).map_err(|e| format!("{file}: {e}"))?;
        if parsed.components.is_empty() {
            return Err(format!(
                "{file} names no component: add [[component]] tables with name, frames and budget"
            ));
        }
        for (i, c) in parsed.components.iter().enumerate() {
            if c.name.trim().is_empty() {
                return Err(format!("{file}: component {} has an empty name", i + 1));
            }
            if parsed.components[..i].iter().any(|o| o.name == c.name) {
                return Err(format!("{file}: component {:?} is named twice", c.name));
            }
            if c.frames.iter().any(|p| p.trim().is_empty()) {
                return Err(format!(
                    "{file}: component {:?} has an empty frame pattern",
                    c.name
                ));
            }
        }
        Ok(Self {
            file: file.to_string(),
            components: parsed.components,
        })
    }

    /// Reads and checks a budget file (the CLI's `--budget` parser).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&path.display().to_string(), &text)
    }

    fn budget_of(&self, name: &str) -> Option<u64> {
        self.components
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.budget.0)
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters.
pub fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// One named frame and the file its code lies in (`""` where none is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub name: String,
    pub object: String,
}

/// Crates of a Rust program that are never its own component.
const RUNTIME_CRATES: &[&str] = &["std", "core", "alloc", "compiler_builtins", "__rustc"];

/// Shared objects that are the C runtime or an allocator: never a library-only stack's
/// component while another library is on the stack.
const RUNTIME_OBJECTS: &[&str] = &[
    "libc.so",
    "libc-",
    "ld-linux",
    "libstdc++",
    "libgcc_s",
    "libpthread",
    "libm.so",
    "libjemalloc",
    "libtcmalloc",
    "libmimalloc",
    "[vdso]",
];

/// What is the target's own code, and which components the budget names.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    /// The executable's file name.
    main_object: String,
    /// Crates named after the executable (`testbed-pool`: `testbed_pool`, `testbed`), tried
    /// before other crates linked into it.
    own_crates: Vec<String>,
    /// The allocator's file name, when it is a library of its own.
    allocator: Option<String>,
    budget: Option<Budget>,
}

impl Classifier {
    pub fn new(main_object: &str, allocator: Option<&str>, budget: Option<Budget>) -> Self {
        let crate_name = main_object.replace('-', "_");
        let mut own_crates = vec![crate_name.clone()];
        if let Some((first, _)) = crate_name.split_once('_') {
            own_crates.push(first.to_string());
        }
        Self {
            main_object: main_object.to_string(),
            own_crates,
            allocator: allocator.map(str::to_string),
            budget,
        }
    }

    pub fn budget(&self) -> Option<&Budget> {
        self.budget.as_ref()
    }

    /// The component of a stack, root first.
    pub fn classify(&self, frames: &[Frame]) -> String {
        if let Some(budget) = &self.budget {
            for frame in frames.iter().rev() {
                if let Some(c) = budget
                    .components
                    .iter()
                    .find(|c| c.frames.iter().any(|p| glob(p, &frame.name)))
                {
                    return c.name.clone();
                }
            }
        }
        self.default_component(frames)
    }

    fn default_component(&self, frames: &[Frame]) -> String {
        let main = |f: &&Frame| f.object == self.main_object;
        let leafward = || frames.iter().rev();
        if let Some(f) = leafward()
            .filter(main)
            .find(|f| rust_crate(&f.name).is_some_and(|c| self.own_crates.iter().any(|o| o == c)))
        {
            return module_of(&f.name);
        }
        if let Some(f) = leafward()
            .filter(main)
            .find(|f| rust_crate(&f.name).is_none_or(|c| !RUNTIME_CRATES.contains(&c)))
        {
            return match rust_crate(&f.name) {
                Some(_) => module_of(&f.name),
                None => self.main_object.clone(),
            };
        }
        let runtime = |object: &str| {
            RUNTIME_OBJECTS.iter().any(|r| object.starts_with(r))
                || self.allocator.as_deref() == Some(object)
        };
        if let Some(f) = leafward().find(|f| !f.object.is_empty() && !runtime(&f.object)) {
            return f.object.clone();
        }
        leafward()
            .find(|f| !f.object.is_empty())
            .map_or_else(|| "[unknown]".to_string(), |f| f.object.clone())
    }
}

/// The crate of a Rust (or C++ namespace of a) path: `testbed` of
/// `<testbed::pool::Conn as core::ops::Drop>::drop`; None for a plain C name.
fn rust_crate(name: &str) -> Option<&str> {
    let path = name.strip_prefix('<').unwrap_or(name);
    let end = path.find("::")?;
    let head = &path[..end];
    (!head.is_empty() && head.chars().all(|c| c.is_alphanumeric() || c == '_')).then_some(head)
}

/// `a::b::f` → `a::b`; `a::b::T::f` and `<a::b::T as X>::f` → `a::b`; generic arguments, closures and C++
/// parameter lists dropped.
fn module_of(name: &str) -> String {
    let path = match name.strip_prefix('<') {
        // The type of a qualified path: up to ` as ` or its closing `>`.
        Some(inner) => {
            let end = top_level(inner, " as ")
                .or_else(|| top_level(inner, ">"))
                .unwrap_or(inner.len());
            inner[..end].to_string()
        }
        None => name.to_string(),
    };
    let mut plain = String::with_capacity(path.len());
    let mut depth = 0usize;
    for c in path.chars() {
        match c {
            '<' | '(' => depth += 1,
            '>' | ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let mut segments: Vec<&str> = plain
        .split("::")
        .filter(|s| !s.is_empty() && !s.starts_with('{'))
        .collect();
    if segments.len() > 1 {
        segments.pop();
    }
    // A method's type is not a module (Rust types are capitalised).
    while segments.len() > 1
        && segments
            .last()
            .is_some_and(|s| s.starts_with(char::is_uppercase))
    {
        segments.pop();
    }
    segments.join("::")
}

/// Where `needle` first occurs in `text` outside any `<…>`.
fn top_level(text: &str, needle: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        if depth == 0 && text[i..].starts_with(needle) {
            return Some(i);
        }
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// One component's bytes against its budget.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComponentBytes {
    pub name: String,
    /// `--alloc`: live bytes at the end (estimated when sampling); `--memory`: bytes grown
    /// during the capture and still held.
    pub bytes: u64,
    /// From the budget file; None when it names no budget for this component.
    pub budget_bytes: Option<u64>,
    pub over_budget: bool,
    /// Least-squares slope of its bytes across the snapshots, per minute.
    pub rate_bytes_per_min: f64,
    /// Share of every component's bytes, in percent.
    pub share_percent: f64,
    /// Stacks in it.
    pub stacks: usize,
}

/// Components, over budget first, then by bytes: every budgeted one and up to [`LISTED`]
/// others.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Components {
    /// What `bytes` counts: `live bytes` or `held growth`.
    pub measure: String,
    /// The budget file, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_file: Option<String>,
    pub components: Vec<ComponentBytes>,
}

impl Components {
    pub fn over_budget(&self) -> impl Iterator<Item = &ComponentBytes> {
        self.components.iter().filter(|c| c.over_budget)
    }
}

/// One stack's part: its component, its bytes now and its bytes at each snapshot (the same
/// snapshots, in order, for every stack).
pub struct StackPart<'a> {
    pub component: &'a str,
    pub bytes: u64,
    pub series: Vec<(f64, f64)>,
}

/// Sums stacks into components and sets each against its budget.
pub fn group<'a>(
    measure: &str,
    parts: impl IntoIterator<Item = StackPart<'a>>,
    budget: Option<&Budget>,
) -> Components {
    // (name, bytes, series, stacks) in order of first appearance.
    type Sum = (String, u64, Vec<(f64, f64)>, usize);
    let mut by: Vec<Sum> = Vec::new();
    for part in parts {
        let at = match by.iter().position(|c| c.0 == part.component) {
            Some(at) => at,
            None => {
                by.push((part.component.to_string(), 0, Vec::new(), 0));
                by.len() - 1
            }
        };
        let entry = &mut by[at];
        entry.1 += part.bytes;
        entry.3 += 1;
        if entry.2.is_empty() {
            entry.2 = part.series;
        } else {
            for (sum, (_, v)) in entry.2.iter_mut().zip(part.series) {
                sum.1 += v;
            }
        }
    }
    // Budgeted components the capture never saw are listed with nothing.
    for c in budget.iter().flat_map(|b| &b.components) {
        if !by.iter().any(|e| e.0 == c.name) {
            by.push((c.name.clone(), 0, Vec::new(), 0));
        }
    }
    let total: u64 = by.iter().map(|e| e.1).sum();
    let mut components: Vec<ComponentBytes> = by
        .into_iter()
        .map(|(name, bytes, series, stacks)| {
            let budget_bytes = budget.and_then(|b| b.budget_of(&name));
            ComponentBytes {
                over_budget: budget_bytes.is_some_and(|b| bytes > b),
                budget_bytes,
                rate_bytes_per_min: growth(&series).0 * 60.0,
                share_percent: if total == 0 {
                    0.0
                } else {
                    bytes as f64 * 100.0 / total as f64
                },
                stacks,
                bytes,
                name,
            }
        })
        .collect();
    components
        .sort_by(|a, b| (b.over_budget, b.bytes, &a.name).cmp(&(a.over_budget, a.bytes, &b.name)));
    let mut others = 0;
    components.retain(|c| {
        c.budget_bytes.is_some() || {
            others += 1;
            others <= LISTED
        }
    });
    Components {
        measure: measure.to_string(),
        budget_file: budget.map(|b| b.file.clone()),
        components,
    }
}

/// A component's use of its budget, `235%`.
fn use_of(c: &ComponentBytes) -> String {
    match c.budget_bytes {
        Some(0) => "-".into(),
        Some(b) => format!("{:.0}%", c.bytes as f64 * 100.0 / b as f64),
        None => "-".into(),
    }
}

/// The components table for the terminal and text reports.
pub fn render(components: &Components) -> String {
    let mut out = String::new();
    if components.components.is_empty() {
        return out;
    }
    let _ = write!(out, "components ({}", components.measure);
    if let Some(file) = &components.budget_file {
        let _ = write!(out, "; budgets from {file}");
    }
    let _ = writeln!(out, "):");
    let _ = writeln!(
        out,
        "  {:>10} {:>10} {:>6} {:>12} {:>6}  component",
        "bytes", "budget", "use", "rate/min", "share"
    );
    for c in &components.components {
        let _ = writeln!(
            out,
            "  {:>10} {:>10} {:>6} {:>12} {:>5.1}%  {}{}",
            bytes(c.bytes),
            c.budget_bytes.map_or_else(|| "-".into(), bytes),
            use_of(c),
            signed_bytes(c.rate_bytes_per_min),
            c.share_percent,
            c.name,
            if c.over_budget { "  OVER BUDGET" } else { "" }
        );
    }
    out
}

fn signed_bytes(rate: f64) -> String {
    let sign = if rate < 0.0 { "-" } else { "+" };
    format!("{sign}{}", bytes(rate.abs() as u64))
}

/// One loud line per component over its budget, for the top of a report.
pub fn alarms(components: &Components) -> String {
    findings(components, "", "")
        .into_iter()
        .map(|f| f.what + "\n")
        .collect()
}

/// A finding for each component over its budget, ahead of everything else in the digest.
pub fn findings(components: &Components, family: &str, file: &str) -> Vec<Finding> {
    components
        .over_budget()
        .map(|c| Finding {
            family: family.into(),
            subject: format!("budget {}", c.name),
            impact: 1.0,
            what: format!(
                "OVER BUDGET: component {} holds {} {} against its budget of {} ({})",
                c.name,
                bytes(c.bytes),
                components.measure,
                bytes(c.budget_bytes.unwrap_or(0)),
                use_of(c)
            ),
            file: file.into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(list: &[(&str, &str)]) -> Vec<Frame> {
        list.iter()
            .map(|(name, object)| Frame {
                name: name.to_string(),
                object: object.to_string(),
            })
            .collect()
    }

    const BUDGET: &str = r#"
# the pool's parts
[[component]]
name = "share log"
frames = ["testbed::pool::share_log::*"]
budget = "512 KiB"

[[component]]
name = "parser"
frames = ["*::stratum::parse*", "parse_line"]
budget = 1048576

[[component]]
name = "testbed::pool::conn"
budget = "1.5 MiB"
"#;

    #[test]
    fn budget_file_parses_and_refuses_nonsense() {
        let b = Budget::parse("b.toml", BUDGET).unwrap();
        assert_eq!(b.components.len(), 3);
        assert_eq!(b.components[0].budget, ByteSize(512 * 1024));
        assert_eq!(b.components[1].budget, ByteSize(1 << 20));
        assert_eq!(b.components[2].budget, ByteSize(1_572_864));
        assert!(b.components[2].frames.is_empty());
        for bad in [
            "",
            "[[component]]\nname = \"a\"\nbudget = \"12 parsecs\"\n",
            "[[component]]\nname = \"a\"\nframes = [\"x\"]\n",
            "[[component]]\nname = \"a\"\nbudget = 1\nbudgte = 2\n",
            "[[component]]\nname = \"a\"\nbudget = 1\n[[component]]\nname = \"a\"\nbudget = 2\n",
        ] {
            assert!(Budget::parse("b.toml", bad).is_err(), "{bad}");
        }
        assert_eq!(parse_bytes("4MiB"), Ok(4 << 20));
        assert_eq!(parse_bytes("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("96"), Ok(96));
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(glob(
            "testbed::pool::share_log::*",
            "testbed::pool::share_log::record"
        ));
        assert!(!glob(
            "testbed::pool::share_log::*",
            "testbed::pool::conn::read"
        ));
        assert!(glob("leak_96", "leak_96"));
        assert!(!glob("leak_96", "leak_960"));
        assert!(glob(
            "*::stratum::parse*",
            "testbed::stratum::parse_request"
        ));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYYcd"));
        assert!(glob("*", ""));
    }

    #[test]
    fn modules_of_rust_and_cpp_names() {
        assert_eq!(
            module_of("testbed::pool::share_log::record"),
            "testbed::pool::share_log"
        );
        assert_eq!(
            module_of("<testbed::pool::Conn as core::ops::drop::Drop>::drop"),
            "testbed::pool"
        );
        assert_eq!(
            module_of("testbed::pool::serve::{{closure}}::{{closure}}"),
            "testbed::pool"
        );
        assert_eq!(
            module_of("<alloc::vec::Vec<T> as core::clone::Clone>::clone"),
            "alloc::vec"
        );
        assert_eq!(
            module_of("hashbrown::raw::RawTable<T,A>::reserve_rehash"),
            "hashbrown::raw"
        );
        assert_eq!(module_of("ns::Cache::insert(int, char const*)"), "ns");
        assert_eq!(module_of("main"), "main");
        assert_eq!(rust_crate("leak_96"), None);
        assert_eq!(rust_crate("<testbed::X as Y>::f"), Some("testbed"));
    }

    #[test]
    fn default_components_from_the_targets_own_code() {
        let c = Classifier::new("testbed-pool", None, None);
        // The leafmost frame of the pool's own crate, past std and hashbrown.
        let pool = frames(&[
            ("main", "testbed-pool"),
            ("testbed::pool::serve", "testbed-pool"),
            ("testbed::pool::share_log::record", "testbed-pool"),
            (
                "hashbrown::raw::RawTable<T>::reserve_rehash",
                "testbed-pool",
            ),
            ("alloc::alloc::alloc", "testbed-pool"),
            ("malloc", "libc.so.6"),
        ]);
        assert_eq!(c.classify(&pool), "testbed::pool::share_log");
        // A dependency's code with none of the pool's own on the stack (a runtime thread).
        let dep = frames(&[
            ("std::thread::start", "testbed-pool"),
            ("tokio::runtime::park", "testbed-pool"),
            ("alloc::alloc::alloc", "testbed-pool"),
            ("malloc", "libc.so.6"),
        ]);
        assert_eq!(c.classify(&dep), "tokio::runtime");
        // C: the executable.
        let c_fixture = Classifier::new("memory_growth", Some("libjemalloc.so.2"), None);
        let leak = frames(&[
            ("__libc_start_main", "libc.so.6"),
            ("main", "memory_growth"),
            ("leak_96", "memory_growth"),
            ("malloc", "libjemalloc.so.2"),
        ]);
        assert_eq!(c_fixture.classify(&leak), "memory_growth");
        // Wholly in libraries: the leafmost that is neither libc nor the allocator.
        let lib = frames(&[
            ("start_thread", "libc.so.6"),
            ("ssl_worker", "libssl.so.3"),
            ("CRYPTO_malloc", "libcrypto.so.3"),
            ("malloc", "libjemalloc.so.2"),
        ]);
        assert_eq!(c_fixture.classify(&lib), "libcrypto.so.3");
        assert_eq!(c_fixture.classify(&[]), "[unknown]");
    }

    #[test]
    fn budget_patterns_win_at_the_leafmost_match() {
        let budget = Budget::parse("b.toml", BUDGET).unwrap();
        let c = Classifier::new("testbed-pool", None, Some(budget));
        // Parsing inside the share log's code is the parser's.
        let stack = frames(&[
            ("testbed::pool::share_log::record", "testbed-pool"),
            ("testbed::stratum::parse_request", "testbed-pool"),
            ("malloc", "libc.so.6"),
        ]);
        assert_eq!(c.classify(&stack), "parser");
        let stack = frames(&[
            ("testbed::pool::share_log::record", "testbed-pool"),
            ("malloc", "libc.so.6"),
        ]);
        assert_eq!(c.classify(&stack), "share log");
        let stack = frames(&[("testbed::pool::conn::read", "testbed-pool")]);
        assert_eq!(c.classify(&stack), "testbed::pool::conn");
    }

    #[test]
    fn components_sum_their_stacks_against_budgets() {
        let budget = Budget::parse("b.toml", BUDGET).unwrap();
        let series =
            |a: f64, b: f64, c: f64, d: f64| vec![(0.0, a), (60.0, b), (120.0, c), (180.0, d)];
        let parts = vec![
            StackPart {
                component: "share log",
                bytes: 400 * 1024,
                series: series(0.0, 100.0, 200.0, 300.0),
            },
            StackPart {
                component: "share log",
                bytes: 200 * 1024,
                series: series(0.0, 100.0, 200.0, 300.0),
            },
            StackPart {
                component: "testbed::pool::conn",
                bytes: 1024,
                series: series(5.0, 5.0, 5.0, 5.0),
            },
        ];
        let components = group("live bytes", parts, Some(&budget));
        let names: Vec<&str> = components
            .components
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        // Over budget first; the parser, budgeted and never seen, listed with nothing.
        assert_eq!(names, ["share log", "testbed::pool::conn", "parser"]);
        let log = &components.components[0];
        assert_eq!(log.bytes, 600 * 1024);
        assert!(log.over_budget);
        assert_eq!(log.stacks, 2);
        assert!(
            (log.rate_bytes_per_min - 200.0).abs() < 1e-6,
            "{}",
            log.rate_bytes_per_min
        );
        assert!(!components.components[1].over_budget);
        assert_eq!(components.components[2].bytes, 0);
        let text = render(&components);
        assert!(text.contains("OVER BUDGET"), "{text}");
        assert!(text.contains("117%"), "{text}");
        let found = findings(&components, "alloc", "leaks.txt");
        assert_eq!(found.len(), 1);
        assert!(
            found[0]
                .what
                .starts_with("OVER BUDGET: component share log holds 600.0 KiB"),
            "{}",
            found[0].what
        );
    }
}
