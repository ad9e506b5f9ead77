//! The live progress line of a capture.

use std::{
    io::{self, IsTerminal},
    time::{Duration, Instant},
};

/// The live line on stderr: elapsed, remaining, events. Redrawn in place on a terminal;
/// elsewhere (logs, CI) a line every ten seconds.
pub struct Progress {
    enabled: bool,
    tty: bool,
    last_plain: Option<Instant>,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            tty: io::stderr().is_terminal(),
            last_plain: None,
        }
    }

    pub fn draw(&mut self, elapsed: Duration, total: Option<Duration>, events: &str) {
        if !self.enabled {
            return;
        }
        let left = match total {
            Some(total) => format!("{:.0}s left", total.saturating_sub(elapsed).as_secs_f64()),
            None => "until Ctrl-C".to_string(),
        };
        let line = format!(
            "capturing: {:.0}s elapsed, {left}, {events}",
            elapsed.as_secs_f64()
        );
        if self.tty {
            eprint!("\r\x1b[K{line}");
        } else if self
            .last_plain
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            self.last_plain = Some(Instant::now());
            eprintln!("{line}");
        }
    }

    pub fn clear(&self) {
        if self.enabled && self.tty {
            eprint!("\r\x1b[K");
        }
    }
}
