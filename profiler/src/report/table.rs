//! Terminal tables.

use std::fmt::Write as _;

use super::profile::FunctionShare;

/// A "top functions" table: share, weight, name; names cut to fit a terminal line.
pub fn top_functions(title: &str, unit: &str, rows: &[FunctionShare]) -> String {
    const NAME_WIDTH: usize = 90;
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let _ = writeln!(out, "  {:>6}  {:>10}  function", "share", unit);
    if rows.is_empty() {
        let _ = writeln!(out, "  (nothing recorded)");
    }
    for row in rows {
        let name: String = if row.function.chars().count() > NAME_WIDTH {
            let cut: String = row.function.chars().take(NAME_WIDTH - 1).collect();
            format!("{cut}…")
        } else {
            row.function.clone()
        };
        let _ = writeln!(
            out,
            "  {:>5.1}%  {:>10}  {}",
            row.share * 100.0,
            row.weight,
            name
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rows_in_order() {
        let rows = [
            FunctionShare {
                function: "hot_leaf".into(),
                weight: 90,
                share: 0.9,
            },
            FunctionShare {
                function: "x".repeat(200),
                weight: 10,
                share: 0.1,
            },
        ];
        let table = top_functions("Top functions by self time", "samples", &rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "Top functions by self time");
        assert!(lines[2].contains(" 90.0%") && lines[2].ends_with("hot_leaf"));
        assert!(lines[3].ends_with('…'));
        assert!(lines[3].chars().count() < 120);
        assert!(top_functions("t", "samples", &[]).contains("nothing recorded"));
    }
}
