//! `profile.pb.gz`: the CPU profile in pprof's format (gzipped protobuf), so `go tool pprof`,
//! Pyroscope and Parca can read it. The messages are the subset of pprof's `profile.proto` a
//! sampled stack profile needs, declared with prost's derives.

use std::{collections::HashMap, io::Write};

use flate2::{Compression, write::GzEncoder};
use prost::Message;

use super::profile::WeightedStack;

#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
}

/// Interns strings; index 0 is the empty string, as pprof requires.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        Self {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// Builds the profile of on-CPU samples taken at `frequency` Hz; each frame name becomes a
/// function with one location, the thread a label.
pub fn cpu_profile(
    stacks: &[WeightedStack],
    frequency: u64,
    start_unix_nanos: i64,
    duration_nanos: i64,
) -> Profile {
    build(
        stacks,
        &cpu_kind(frequency),
        |_| &[],
        start_unix_nanos,
        duration_nanos,
    )
}

/// What a profile's samples measure: one `(type, unit)` per value, and the period. A stack's
/// weight is the first value; the second, when there is one, is the weight times the period.
pub struct Kind {
    pub values: &'static [(&'static str, &'static str)],
    pub period: (&'static str, &'static str, i64),
}

/// On-CPU samples at `frequency` Hz.
pub fn cpu_kind(frequency: u64) -> Kind {
    Kind {
        values: &[("samples", "count"), ("cpu", "nanoseconds")],
        period: (
            "cpu",
            "nanoseconds",
            1_000_000_000 / frequency.max(1) as i64,
        ),
    }
}

/// Time off the CPU, weights in nanoseconds.
pub const OFFCPU: Kind = Kind {
    values: &[("offcpu", "nanoseconds")],
    period: ("offcpu", "nanoseconds", 1),
};

/// Time waited on locks, weights in nanoseconds (Go's mutex profile names it `delay`).
pub const LOCKS: Kind = Kind {
    values: &[("delay", "nanoseconds")],
    period: ("delay", "nanoseconds", 1),
};

/// Live blocks by stack, as Go's heap profile's in-use values (`go tool pprof` shows
/// `inuse_space` by default).
pub const INUSE: Kind = Kind {
    values: &[("inuse_objects", "count"), ("inuse_space", "bytes")],
    period: ("space", "bytes", 1),
};

/// Pages held by the stack that first touched them.
pub const HELD: Kind = Kind {
    values: &[("held_pages", "count"), ("held_space", "bytes")],
    period: ("space", "bytes", 1),
};

/// A live profile (`INUSE`, `HELD`): each stack's count and bytes as its two values.
pub fn live<'a>(
    stacks: &[super::profile::LiveStack],
    kind: &Kind,
    labels: impl Fn(usize) -> &'a [(String, String)],
    time_unix_nanos: i64,
) -> Profile {
    let weighted: Vec<WeightedStack> = stacks
        .iter()
        .map(|s| WeightedStack {
            thread: String::new(),
            tid: 0,
            frames: s.frames.clone(),
            weight: s.count.max(0) as u64,
        })
        .collect();
    let mut profile = build(&weighted, kind, labels, time_unix_nanos, 0);
    // `build` gives each sample one weight; the second value is the stack's own bytes.
    for (sample, stack) in profile.sample.iter_mut().zip(stacks) {
        if let Some(bytes) = sample.value.get_mut(1) {
            *bytes = stack.bytes;
        }
    }
    profile
}

/// A stack profile: each frame name a function with one location, each sample labelled with
/// its thread and with `labels(i)` for the `i`th stack (the agent's pid, comm and host).
pub fn build<'a>(
    stacks: &[WeightedStack],
    kind: &Kind,
    labels: impl Fn(usize) -> &'a [(String, String)],
    start_unix_nanos: i64,
    duration_nanos: i64,
) -> Profile {
    let mut strings = Strings::new();
    let sample_type = kind
        .values
        .iter()
        .map(|(t, u)| ValueType {
            r#type: strings.get(t),
            unit: strings.get(u),
        })
        .collect();
    let (period_name, period_unit, period) = kind.period;
    let period_type = Some(ValueType {
        r#type: strings.get(period_name),
        unit: strings.get(period_unit),
    });
    let thread_key = strings.get("thread");
    let mut location_of: HashMap<&str, u64> = HashMap::new();
    let mut functions = Vec::new();
    let mut locations = Vec::new();
    let mut samples = Vec::with_capacity(stacks.len());
    for (index, stack) in stacks.iter().enumerate() {
        let mut location_id = Vec::with_capacity(stack.frames.len());
        for frame in stack.frames.iter().rev() {
            let id = *location_of.entry(frame.as_str()).or_insert_with(|| {
                let id = locations.len() as u64 + 1;
                let name = strings.get(frame);
                functions.push(Function {
                    id,
                    name,
                    system_name: name,
                });
                locations.push(Location {
                    id,
                    line: vec![Line { function_id: id }],
                });
                id
            });
            location_id.push(id);
        }
        let weight = stack.weight as i64;
        let value = (0..kind.values.len())
            .map(|i| if i == 0 { weight } else { weight * period })
            .collect();
        let mut label = vec![Label {
            key: thread_key,
            str: strings.get(&stack.thread),
        }];
        for (key, value) in labels(index) {
            label.push(Label {
                key: strings.get(key),
                str: strings.get(value),
            });
        }
        samples.push(Sample {
            location_id,
            value,
            label,
        });
    }
    Profile {
        sample_type,
        sample: samples,
        location: locations,
        function: functions,
        string_table: strings.table,
        time_nanos: start_unix_nanos,
        duration_nanos,
        period_type,
        period,
    }
}

/// Writes the gzipped encoding.
pub fn write(profile: &Profile, out: impl Write) -> std::io::Result<()> {
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&profile.encode_to_vec())?;
    gz.finish()?;
    Ok(())
}

/// Reads a gzipped profile back.
pub fn read(data: &[u8]) -> std::io::Result<Profile> {
    use std::io::Read;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut raw)?;
    Profile::decode(raw.as_slice()).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::profile::stack;

    #[test]
    fn round_trips_with_the_same_totals() {
        let stacks = [
            stack("worker", &["main", "outer", "hot_leaf"], 40),
            stack("worker", &["main", "outer", "other"], 2),
            stack("late", &["main", "late_leaf"], 9),
        ];
        let profile = cpu_profile(&stacks, 99, 1_700_000_000_000_000_000, 3_000_000_000);
        let mut bytes = Vec::new();
        write(&profile, &mut bytes).unwrap();
        let back = read(&bytes).unwrap();
        assert_eq!(back, profile);
        let total: i64 = back.sample.iter().map(|s| s.value[0]).sum();
        assert_eq!(total, 51);
        assert_eq!(back.period, 1_000_000_000 / 99);
        // Leaf first: hot_leaf's location heads its sample.
        let first = &back.sample[0];
        let leaf = &back.location[(first.location_id[0] - 1) as usize];
        let name = back.function[(leaf.line[0].function_id - 1) as usize].name;
        assert_eq!(back.string_table[name as usize], "hot_leaf");
        assert_eq!(back.string_table[0], "");
        // Shared frames share one location.
        assert_eq!(back.location.len(), 5);
    }
}
