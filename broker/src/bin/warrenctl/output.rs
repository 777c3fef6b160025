//! How `warrenctl` prints: readable tables by default, the reply as JSON with `--json`.

use comfy_table::{presets, Table};
use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `reply` as JSON, or as a table of `rows` under `header`.
    pub fn table<T: Serialize>(&self, reply: &T, header: &[&str], rows: Vec<Vec<String>>) {
        if self.json {
            return self.json(reply);
        }
        if rows.is_empty() {
            println!("(none)");
            return;
        }
        let mut table = Table::new();
        table.load_preset(presets::NOTHING);
        table.set_header(header.iter().map(|h| h.to_uppercase()));
        for row in rows {
            table.add_row(row);
        }
        // comfy-table pads every cell with a space each side; drop the outer ones.
        for line in table.to_string().lines() {
            println!("{}", line.strip_prefix(' ').unwrap_or(line).trim_end());
        }
    }

    /// Prints `reply` as JSON, or `key: value` lines.
    pub fn fields<T: Serialize>(&self, reply: &T, fields: &[(&str, String)]) {
        if self.json {
            return self.json(reply);
        }
        let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in fields {
            println!("{k:<width$}  {v}");
        }
    }

    /// Prints `reply` as JSON, or `text`.
    pub fn done<T: Serialize>(&self, reply: &T, text: &str) {
        if self.json {
            return self.json(reply);
        }
        println!("{text}");
    }

    pub fn json<T: Serialize>(&self, reply: &T) {
        match serde_json::to_string_pretty(reply) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: encoding JSON: {e}"),
        }
    }
}

pub fn rate(per_second: f64) -> String {
    format!("{per_second:.1}/s")
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// `k=v` pairs, sorted, comma-separated.
pub fn map<V: std::fmt::Display>(m: &std::collections::HashMap<String, V>) -> String {
    let mut pairs: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(duration_ms(59_999), "59s");
        assert_eq!(duration_ms(61_000), "1m1s");
        assert_eq!(duration_ms(7_380_000), "2h3m");
        assert_eq!(duration_ms(90_000_000), "1d1h");
    }
}
