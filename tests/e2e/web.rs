//! HTTP from the tests' side: a plain HTTP/1.1 GET over a socket, and a real browser (Debian's
//! chromium, headless) that loads a page and prints the DOM it built.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{GUARD, tool_or_skip};

pub struct Response {
    pub status: u16,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET base + path` with an optional `Authorization` header value.
pub fn get(base: &str, path: &str, authorization: Option<&str>) -> Response {
    let host = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    stream.set_read_timeout(Some(GUARD)).unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The browser, if there is one: `None` (after saying so) where it is missing and not required.
fn chromium() -> Option<&'static str> {
    tool_or_skip(
        "chromium",
        &["--version"],
        "apt-get install chromium",
        "the browser checks",
    )
    .then_some("chromium")
}

fn headless(browser: &str, profile: &Path) -> Command {
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .stdin(Stdio::null());
    cmd
}

/// Loads `url` in headless chromium and returns the DOM it built (`None`: no browser here).
pub fn browser_dom(url: &str, profile: &Path) -> Option<String> {
    let browser = chromium()?;
    let out = run_guarded(headless(browser, profile).arg("--dump-dom").arg(url));
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Renders `url` to a PNG at `png`; returns whether a browser was there to do it.
pub fn browser_screenshot(url: &str, profile: &Path, png: &Path) -> bool {
    let Some(browser) = chromium() else {
        return false;
    };
    let out = run_guarded(
        headless(browser, profile)
            .arg("--window-size=1280,1400")
            .arg(format!("--screenshot={}", png.display()))
            .arg(url),
    );
    assert!(
        out.status.success(),
        "chromium failed to render {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

fn run_guarded(cmd: &mut Command) -> std::process::Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(GUARD) {
        Ok(out) => out.expect("chromium ran"),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(id as i32, libc::SIGKILL);
            }
            panic!("chromium did not finish within {GUARD:?}");
        }
    }
}
