//! Helpers shared by the observability tests of the core (tests/all/observability.rs) and of
//! the C ABI (crates/vram-monitor-capi/tests/all/c_api_observability.rs): a raw HTTP/1.1 client,
//! the threads of this process by name, a scripted device-health source, and a parser for
//! the Prometheus exposition text. Included with `#[path]` (it is not a test of its own).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vram_monitor::device_health::{DeviceHealthSource, DeviceReading, RemappedRows, Signal};
use vram_monitor::{Driver, Event, Monitor};

// ------------------------------------------------------------------------------------------
// A raw HTTP client

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream
}

/// Reads a whole response (the server closes the connection after each one).
pub fn read_response(mut stream: TcpStream) -> Response {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or_else(|| panic!("bad header {l:?}"));
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Response { status, headers, body: body.to_string() }
}

pub fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut stream = connect(addr);
    stream.write_all(raw).unwrap();
    read_response(stream)
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").as_bytes())
}

// ------------------------------------------------------------------------------------------
// Threads of this process by name (Linux keeps 15 bytes of a thread's name).

/// Live threads of this process whose name starts with `prefix`. A joined thread can stay
/// listed in /proc for a moment as a zombie or dead task (the kernel wakes the joiner before it
/// reaps the task), so tasks in state Z or X are not counted: they run nothing any more.
pub fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
                .filter(|stat| {
                    // "tid (comm) S ...": the name may hold spaces or parentheses, so split at
                    // the last ')'.
                    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
                    let state = stat[close + 1..].trim_start().chars().next();
                    stat[open + 1..close].starts_with(prefix) && !matches!(state, Some('Z' | 'X' | 'x'))
                })
                .count()
        })
        .unwrap_or(0)
}

// ------------------------------------------------------------------------------------------
// Device health from a scripted source

#[derive(Clone, Default)]
pub struct Script(pub Arc<Mutex<HashMap<i32, Result<DeviceReading, String>>>>);

impl Script {
    pub fn set(&self, device: i32, reading: Result<DeviceReading, String>) {
        self.0.lock().unwrap().insert(device, reading);
    }
}

impl DeviceHealthSource for Script {
    fn read(&mut self, _driver: &dyn Driver, device: i32) -> Result<DeviceReading, String> {
        let mut script = self.0.lock().unwrap();
        let entry = script.entry(device).or_insert_with(|| Err("not scripted".into()));
        let reading = entry.clone();
        // XID events are delivered once.
        if let Ok(r) = entry {
            if let Signal::Value(x) = &mut r.new_critical_xids {
                x.clear();
            }
        }
        reading
    }
}

pub fn clean_reading() -> DeviceReading {
    DeviceReading {
        index: Some(0),
        uuid: Some("GPU-00000000-1111-2222-3333-444444444444".into()),
        name: Some("Scripted \"GPU\"".into()),
        ecc_uncorrected_volatile: Signal::Value(0),
        retired_pages_pending: Signal::Unsupported,
        remapped_rows: Signal::Value(RemappedRows { correctable: 1, uncorrectable: 0, pending: false, failed: false }),
        new_critical_xids: Signal::Value(vec![]),
    }
}

pub fn unsupported_reading() -> DeviceReading {
    DeviceReading {
        index: None,
        uuid: None,
        name: None,
        ecc_uncorrected_volatile: Signal::Unsupported,
        retired_pages_pending: Signal::Unsupported,
        remapped_rows: Signal::Unsupported,
        new_critical_xids: Signal::Unsupported,
    }
}

pub fn recorder(m: &Monitor) -> Arc<Mutex<Vec<Event>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    m.set_callback(Some(Arc::new(move |e: &Event| sink.lock().unwrap().push(e.clone()))));
    events
}

// ------------------------------------------------------------------------------------------
// The Prometheus exposition text

/// Parses exposition text: family -> (type, help, samples as (labels, value)). Fails on any
/// line that is not a comment, blank, or `name{labels} value`.
pub type Families = BTreeMap<String, (String, String, Vec<(BTreeMap<String, String>, f64)>)>;

pub fn parse_exposition(text: &str) -> Families {
    let mut families = Families::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            families.entry(name.into()).or_default().1 = help.into();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.entry(name.into()).or_default().0 = kind.into();
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                    let mut map = BTreeMap::new();
                    let mut rest = labels;
                    while !rest.is_empty() {
                        let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label: {line}"));
                        let mut value = String::new();
                        let mut chars = after.char_indices();
                        let mut end = None;
                        while let Some((i, c)) = chars.next() {
                            match c {
                                '\\' => {
                                    let (_, e) = chars.next().unwrap();
                                    value.push(if e == 'n' { '\n' } else { e });
                                }
                                '"' => {
                                    end = Some(i);
                                    break;
                                }
                                c => value.push(c),
                            }
                        }
                        let end = end.unwrap_or_else(|| panic!("unterminated label value: {line}"));
                        map.insert(key.to_string(), value);
                        rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
                    }
                    (name, map)
                }
                None => (series, BTreeMap::new()),
            };
            let family = families.get_mut(name).unwrap_or_else(|| panic!("sample before its # TYPE: {line}"));
            family.2.push((labels, value));
        }
    }
    families
}

pub fn value(families: &Families, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families.get(name)?.2.iter().find(|(l, _)| labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))).map(|(_, v)| *v)
}
