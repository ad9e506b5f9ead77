//! Interactive SVG flamegraphs, drawn by inferno from folded lines.

use std::io::{self, Write};

use inferno::flamegraph::{self, Options};

/// What a flamegraph shows, for its title and tooltips.
pub struct Labels<'a> {
    pub title: &'a str,
    pub subtitle: Option<&'a str>,
    /// The unit of the weights: "samples", "us", "bytes".
    pub count_name: &'a str,
}

/// Writes a flamegraph of `folded` lines. An empty profile still gets a valid SVG that says so.
pub fn write(folded: &[String], labels: &Labels<'_>, out: impl Write) -> io::Result<()> {
    let mut options = Options::default();
    options.title = labels.title.to_string();
    options.subtitle = labels.subtitle.map(str::to_string);
    options.count_name = labels.count_name.to_string();
    options.deterministic = true;
    if folded.is_empty() {
        // inferno refuses an empty profile; draw one labelled frame instead.
        let empty = ["no samples 1"];
        return flamegraph::from_lines(&mut options, empty.iter().copied(), out);
    }
    flamegraph::from_lines(&mut options, folded.iter().map(String::as_str), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titled_svg_with_frames() {
        let folded = vec![
            "t;main;hot_leaf 3".to_string(),
            "t;main;other 1".to_string(),
        ];
        let labels = Labels {
            title: "cpu: fixture (pid 7), 3s",
            subtitle: Some("99 Hz"),
            count_name: "samples",
        };
        let mut svg = Vec::new();
        write(&folded, &labels, &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("cpu: fixture (pid 7), 3s"));
        assert!(svg.contains("hot_leaf (3 samples, 75.00%)"), "{svg}");
    }

    #[test]
    fn empty_profile_still_draws() {
        let labels = Labels {
            title: "empty",
            subtitle: None,
            count_name: "samples",
        };
        let mut svg = Vec::new();
        write(&[], &labels, &mut svg).unwrap();
        assert!(String::from_utf8(svg).unwrap().contains("no samples"));
    }
}
