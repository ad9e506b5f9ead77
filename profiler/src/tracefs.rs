//! Tracepoint formats from tracefs: where each field of an event's record lies. Offsets are
//! read at run time and handed to the eBPF programs, so a kernel that lays a record out
//! differently is handled, not misread.

use std::{collections::HashMap, io, path::Path};

use crate::preflight;

/// One field of a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// The fields of one tracepoint, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Format {
    pub fields: HashMap<String, Field>,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("tracepoint {category}:{event} is not available on this kernel")]
    Missing {
        category: String,
        event: String,
        #[source]
        source: io::Error,
    },
    #[error("tracepoint {category}:{event} has no field {field}")]
    NoField {
        category: String,
        event: String,
        field: String,
    },
    #[error(transparent)]
    Tracefs(#[from] preflight::PreflightError),
}

impl Format {
    /// Parses the text of a `format` file.
    pub fn parse(text: &str) -> Self {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix("field:") else {
                continue;
            };
            let mut name = None;
            let mut field = Field {
                offset: 0,
                size: 0,
                signed: false,
            };
            for part in rest.split(';').map(str::trim) {
                if let Some(v) = part.strip_prefix("offset:") {
                    field.offset = v.parse().unwrap_or(0);
                } else if let Some(v) = part.strip_prefix("size:") {
                    field.size = v.parse().unwrap_or(0);
                } else if let Some(v) = part.strip_prefix("signed:") {
                    field.signed = v == "1";
                } else if name.is_none() && !part.is_empty() {
                    // "unsigned long prev_state" or "char prev_comm[16]": the name is the
                    // last word, without any array suffix.
                    name = part
                        .rsplit(|c: char| c.is_whitespace() || c == '*')
                        .next()
                        .map(|n| n.split('[').next().unwrap_or(n).to_string());
                }
            }
            if let Some(name) = name {
                fields.insert(name, field);
            }
        }
        Self { fields }
    }

    /// Reads the format of `category:event`, mounting tracefs if needed.
    pub fn load(category: &str, event: &str) -> Result<Self, FormatError> {
        let tracefs = preflight::ensure_tracefs()?;
        Self::load_from(&tracefs, category, event)
    }

    fn load_from(tracefs: &Path, category: &str, event: &str) -> Result<Self, FormatError> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(event)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| FormatError::Missing {
            category: category.into(),
            event: event.into(),
            source,
        })?;
        Ok(Self::parse(&text))
    }

    /// The offset of `field`, checked to have the expected size.
    pub fn offset(
        &self,
        category: &str,
        event: &str,
        field: &str,
        size: u32,
    ) -> Result<u32, FormatError> {
        self.fields
            .get(field)
            .filter(|f| f.size == size)
            .map(|f| f.offset)
            .ok_or_else(|| FormatError::NoField {
                category: category.into(),
                event: event.into(),
                field: field.into(),
            })
    }
}

/// Whether `category:event` exists (tracefs mounted by the caller).
pub fn exists(category: &str, event: &str) -> bool {
    preflight::ensure_tracefs()
        .map(|t| t.join("events").join(category).join(event).is_dir())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copied from this machine's /sys/kernel/tracing/events/sched/sched_switch/format.
    const SCHED_SWITCH: &str = "name: sched_switch
ID: 372
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prev_prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:char next_comm[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
\tfield:int next_prio;\toffset:60;\tsize:4;\tsigned:1;

print fmt: \"prev_comm=%s prev_pid=%d\", REC->prev_comm, REC->prev_pid
";

    /// Copied from sys_enter_futex: pointer fields with a space before the star.
    const SYS_ENTER_FUTEX: &str = "name: sys_enter_futex
format:
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:u32 * uaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int op;\toffset:24;\tsize:8;\tsigned:0;
\tfield:const struct __kernel_timespec * utime;\toffset:40;\tsize:8;\tsigned:0;
";

    #[test]
    fn parses_fields() {
        let f = Format::parse(SCHED_SWITCH);
        assert_eq!(
            f.fields["prev_pid"],
            Field {
                offset: 24,
                size: 4,
                signed: true
            }
        );
        assert_eq!(f.fields["next_pid"].offset, 56);
        assert_eq!(f.fields["prev_comm"].size, 16);
        assert_eq!(f.fields["prev_state"].offset, 32);
        assert_eq!(
            f.offset("sched", "sched_switch", "next_pid", 4).unwrap(),
            56
        );
        assert!(f.offset("sched", "sched_switch", "next_pid", 8).is_err());
        assert!(f.offset("sched", "sched_switch", "nope", 4).is_err());

        let f = Format::parse(SYS_ENTER_FUTEX);
        assert_eq!(f.fields["uaddr"].offset, 16);
        assert_eq!(f.fields["op"].offset, 24);
        assert_eq!(f.fields["utime"].offset, 40);
    }

    #[test]
    fn reads_the_live_kernel() {
        // Root and tracefs are needed for this one; the pure parsing is covered above.
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let f = Format::load("sched", "sched_switch").expect("sched_switch format");
        assert!(f.fields.contains_key("next_pid"));
        assert!(matches!(
            Format::load("sched", "no_such_event"),
            Err(FormatError::Missing { .. })
        ));
    }
}
