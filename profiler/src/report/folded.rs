//! Collapsed stacks, one line per stack: `thread;root;...;leaf weight`, the input format of
//! inferno and FlameGraph.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, Write},
};

use super::profile::WeightedStack;

/// Frame names may not contain the separator or end a line; replace what would break parsing.
fn clean(frame: &str) -> String {
    frame.replace([';', '\n', '\r'], ":")
}

/// The folded line of each distinct stack (thread name as root frame), weights merged, sorted.
pub fn fold(stacks: &[WeightedStack]) -> Vec<String> {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for stack in stacks {
        let thread = if stack.thread.is_empty() {
            stack.tid.to_string()
        } else {
            stack.thread.clone()
        };
        let mut line = clean(&thread);
        for frame in &stack.frames {
            line.push(';');
            line.push_str(&clean(frame));
        }
        *merged.entry(line).or_default() += stack.weight;
    }
    merged
        .into_iter()
        .filter(|(_, weight)| *weight > 0)
        .map(|(stack, weight)| format!("{stack} {weight}"))
        .collect()
}

/// The differential of two sets of folded lines (`before`, `after`), counts normalised so the
/// totals match: what inferno draws red where `after` grew, blue where it shrank.
pub fn differential(before: &[String], after: &[String]) -> io::Result<Vec<String>> {
    let text = |lines: &[String]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let mut diff = Vec::new();
    let options = inferno::differential::Options {
        normalize: true,
        ..Default::default()
    };
    inferno::differential::from_readers(
        options,
        text(before).as_bytes(),
        text(after).as_bytes(),
        &mut diff,
    )?;
    Ok(String::from_utf8_lossy(&diff)
        .lines()
        .map(str::to_string)
        .collect())
}

pub fn write(stacks: &[WeightedStack], mut out: impl Write) -> io::Result<()> {
    for line in fold(stacks) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Reads folded lines back as (frames including the root, weight).
pub fn parse(input: impl BufRead) -> io::Result<Vec<(Vec<String>, u64)>> {
    let mut stacks = Vec::new();
    for line in input.lines() {
        let line = line?;
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let (stack, weight) = line.rsplit_once(' ').ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("no weight in {line:?}"))
        })?;
        let weight = weight.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad weight in {line:?}"),
            )
        })?;
        stacks.push((stack.split(';').map(str::to_string).collect(), weight));
    }
    Ok(stacks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::profile::stack;

    #[test]
    fn folds_merges_and_round_trips() {
        let stacks = [
            stack("worker", &["main", "outer", "hot_leaf"], 3),
            stack("worker", &["main", "outer", "hot_leaf"], 2),
            stack("", &["a;b", "c d"], 1),
            stack("idle", &["x"], 0),
        ];
        let lines = fold(&stacks);
        assert_eq!(lines, vec!["1;a:b;c d 1", "worker;main;outer;hot_leaf 5"]);
        let mut text = Vec::new();
        write(&stacks, &mut text).unwrap();
        let parsed = parse(text.as_slice()).unwrap();
        assert_eq!(parsed[1].0, vec!["worker", "main", "outer", "hot_leaf"]);
        assert_eq!(parsed[1].1, 5);
        assert_eq!(parsed[0].0, vec!["1", "a:b", "c d"]);
    }

    #[test]
    fn rejects_lines_without_weight() {
        assert!(parse("a;b;c\n".as_bytes()).is_err());
        assert!(parse("a;b x\n".as_bytes()).is_err());
    }
}
