//! Which exposition format `/metrics` answers in, from the scraper's `Accept` header — as the
//! official clients do: OpenMetrics to whoever asks for it (Prometheus does, by default), the
//! Prometheus text format 0.0.4 to everyone else (curl, `promtool check metrics`, older
//! scrapers).
//!
//! The two differ for counters: OpenMetrics puts `# HELP`/`# TYPE` on the family name
//! (`kafka_infer_records_consumed`) and its sample on `…_total`; the text format wants them all
//! on the sample's name, or a linter reads the samples as an untyped metric without help. And
//! only OpenMetrics has `# UNIT` and the closing `# EOF`.

/// An exposition format `/metrics` can answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`.
    Text,
}

impl Format {
    /// The format for a request with this `Accept` header: OpenMetrics when the scraper accepts
    /// `application/openmetrics-text` at least as much as `text/plain`, else the text format
    /// (also when there is no header or it cannot be read).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The OpenMetrics exposition `om` in the text format 0.0.4: a counter's `# HELP` and `# TYPE`
/// move to its sample name (`_total`), `# UNIT` and `# EOF` go; samples are the same.
pub fn to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 32 * counters.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(prefix);
                out.push_str(name);
                out.push_str(suffix);
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_text_format() {
        // What Prometheus 2.x and 3.x send.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        // curl, promtool, a browser, an old scraper, no header at all.
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("text/html,application/xhtml+xml,*/*;q=0.8")),
            Format::Text
        );
        assert_eq!(Format::negotiate(None), Format::Text);
        // Refused, or preferred less than the text format.
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0, */*")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0.3,text/plain;q=0.9")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("garbage;;q=x,,")),
            Format::Text,
            "unreadable"
        );
    }

    #[test]
    fn the_text_format_puts_counter_help_and_type_on_the_total_sample() {
        let om = "# HELP app_records Records read.\n# TYPE app_records counter\napp_records_total 3\n\
                  # HELP app_lag Lag.\n# TYPE app_lag gauge\n# UNIT app_lag records\napp_lag{partition=\"0\"} 7\n\
                  # HELP app_seconds Latency.\n# TYPE app_seconds histogram\napp_seconds_bucket{le=\"+Inf\"} 1\napp_seconds_sum 0.5\napp_seconds_count 1\n# EOF\n";
        let text = to_text(om);
        assert_eq!(
            text,
            "# HELP app_records_total Records read.\n# TYPE app_records_total counter\napp_records_total 3\n\
             # HELP app_lag Lag.\n# TYPE app_lag gauge\napp_lag{partition=\"0\"} 7\n\
             # HELP app_seconds Latency.\n# TYPE app_seconds histogram\napp_seconds_bucket{le=\"+Inf\"} 1\napp_seconds_sum 0.5\napp_seconds_count 1\n"
        );
    }

    #[test]
    fn content_types_name_the_format_version() {
        assert!(Format::OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text; version=1.0.0"));
        assert!(Format::Text
            .content_type()
            .starts_with("text/plain; version=0.0.4"));
    }
}
