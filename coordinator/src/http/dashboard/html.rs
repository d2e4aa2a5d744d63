//! The dashboard's HTML: one page shell with a navigation bar and a little CSS, escaping, and the
//! formats every page shares. No JavaScript: live pages reload themselves with a refresh header.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use axum::response::Html;
use testfleet_model::Outcome;

/// Escapes text for HTML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1f2328}\
nav{background:#24292f;padding:.6em 1em}nav a{color:#fff;margin-right:1.2em;text-decoration:none}\
nav a.on{font-weight:bold;text-decoration:underline}main{padding:1em 1.5em}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border-bottom:1px solid #d0d7de;padding:.3em .7em;text-align:left;vertical-align:top}\
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.passed{color:#1a7f37}.failed,.timed_out{color:#cf222e}.flaky{color:#9a6700}.skipped,.cancelled{color:#656d76}.infra_error{color:#8250df}\
.running{color:#0969da}.muted{color:#656d76}.note{background:#fff8c5;padding:.4em .6em}code{font-size:.9em}svg{display:block;margin:.5em 0 1.5em}";

/// The whole page: `active` names the navigation entry to mark; `refresh` reloads a live page.
pub(crate) fn page(title: &str, active: &str, refresh: Option<u32>, body: &str) -> Html<String> {
    let mut nav = String::new();
    for (href, label) in [
        ("/", "Runs"),
        ("/flaky", "Flaky tests"),
        ("/slowest", "Slowest tests"),
    ] {
        let on = if label == active { " class=\"on\"" } else { "" };
        let _ = write!(nav, "<a href=\"{href}\"{on}>{label}</a>");
    }
    let refresh = refresh
        .map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"))
        .unwrap_or_default();
    Html(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
         <title>{} · testfleet</title><style>{STYLE}</style></head>\
         <body><nav><strong style=\"color:#fff;margin-right:1.5em\">testfleet</strong>{nav}</nav>\
         <main><h1>{}</h1>\n{body}</main></body></html>\n",
        esc(title),
        esc(title)
    ))
}

/// A CSS class and a label for an outcome, as the JSON reports spell it.
pub(crate) fn outcome_cell(o: Option<Outcome>) -> String {
    match o {
        Some(o) => {
            let label = o.label();
            format!("<span class=\"{label}\">{label}</span>")
        }
        None => "<span class=\"running\">running</span>".into(),
    }
}

/// Milliseconds since the epoch as an HTTP date in UTC (`Sat, 21 Nov 2026 10:40:12 GMT`).
pub(crate) fn time(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "—".into();
    }
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(unix_ms))
}

/// A duration for people: `850 ms`, `12.3 s`, `4 min 05 s`.
pub(crate) fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {:02} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The link to a test's page.
pub(crate) fn test_link(suite: &str, binary_id: &str, name: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("suite", suite)
        .append_pair("binary", binary_id)
        .append_pair("name", name)
        .finish();
    format!(
        "<a href=\"/test?{}\">{}</a> <span class=\"muted\">{}</span>",
        esc(&query),
        esc(name),
        esc(binary_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_links_are_encoded() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let link = test_link("s", "b", "a&b <c>");
        assert!(
            link.contains("/test?suite=s&amp;binary=b&amp;name=a%26b+%3Cc%3E"),
            "{link}"
        );
        assert!(link.contains(">a&amp;b &lt;c&gt;</a>"), "{link}");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_345), "12.3 s");
        assert_eq!(duration(245_000), "4 min 05 s");
        assert_eq!(time(0), "—");
        assert_eq!(time(1_000), "Thu, 01 Jan 1970 00:00:01 GMT");
    }
}
