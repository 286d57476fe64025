//! `sluice report --html FILE`: one self-contained page (no script, no
//! network resource) with two inline SVG charts: the daily messages per
//! location as stacked bars, and the redirected share per day as a line
//! with a point per day.

use super::history::{date, Counts};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Colours of the locations, in order (then repeated).
const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
/// Chart size in SVG units.
const W: f64 = 800.0;
const H: f64 = 260.0;
/// Left and bottom margins (axis labels).
const ML: f64 = 60.0;
const MB: f64 = 30.0;

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page: `title`, the summary lines, the two charts and the table
/// already rendered as text (`table`).
pub fn page(title: &str, daily: &BTreeMap<u32, BTreeMap<String, Counts>>, table: &str) -> String {
    let mut locs: Vec<&str> = daily
        .values()
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();
    locs.sort_unstable();
    locs.dedup();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t}</title><style>body{{font-family:sans-serif;margin:2em}}\
         pre{{background:#f4f4f4;padding:1em}}svg{{background:#fff;border:1px solid #ccc}}</style>\
         </head><body>\n<h1>{t}</h1>\n",
        t = esc(title)
    );
    h.push_str("<h2>Messages per day and location</h2>\n");
    h.push_str(&bars(daily, &locs));
    h.push_str("\n<p>");
    for (i, l) in locs.iter().enumerate() {
        let _ = write!(
            h,
            "<span style=\"color:{}\">&#9632;</span> {} &nbsp; ",
            PALETTE[i % PALETTE.len()],
            esc(l)
        );
    }
    h.push_str("</p>\n<h2>Redirected share per day</h2>\n");
    h.push_str(&line(daily));
    let _ = write!(
        h,
        "\n<h2>Table</h2>\n<pre>{}</pre>\n</body></html>\n",
        esc(table)
    );
    h
}

/// Stacked bars: one `rect class="bar"` per day and location with mail.
fn bars(daily: &BTreeMap<u32, BTreeMap<String, Counts>>, locs: &[&str]) -> String {
    let max = daily
        .values()
        .map(|m| m.values().map(|c| c.messages).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = daily.len().max(1) as f64;
    let slot = (W - ML) / n;
    let bw = (slot * 0.8).max(1.0);
    let mut s = frame(&format!("{max:.0}"));
    for (i, (day, per)) in daily.iter().enumerate() {
        let x = ML + slot * i as f64 + (slot - bw) / 2.0;
        let mut y = H - MB;
        for (k, l) in locs.iter().enumerate() {
            let Some(c) = per.get(*l).filter(|c| c.messages > 0) else {
                continue;
            };
            let h = (H - MB - 10.0) * c.messages as f64 / max;
            y -= h;
            let _ = write!(
                s,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{h:.1}\" \
                 fill=\"{}\"><title>{} {}: {} messages</title></rect>",
                PALETTE[k % PALETTE.len()],
                date(*day),
                esc(l),
                c.messages
            );
        }
    }
    axis_dates(&mut s, daily.keys().copied(), slot);
    s.push_str("</svg>");
    s
}

/// The redirected share: a polyline and a `circle class="point"` per day.
fn line(daily: &BTreeMap<u32, BTreeMap<String, Counts>>) -> String {
    let n = daily.len().max(1) as f64;
    let slot = (W - ML) / n;
    let mut s = frame("100 %");
    let mut pts = Vec::new();
    for (i, per) in daily.values().enumerate() {
        let (m, r) = per
            .values()
            .fold((0u64, 0u64), |(m, r), c| (m + c.messages, r + c.redirected));
        let share = if m == 0 { 0.0 } else { r as f64 / m as f64 };
        let x = ML + slot * (i as f64 + 0.5);
        let y = H - MB - (H - MB - 10.0) * share;
        pts.push((x, y, share));
    }
    let poly: Vec<String> = pts
        .iter()
        .map(|(x, y, _)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = write!(
        s,
        "<polyline class=\"redirected\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"{}\"/>",
        poly.join(" ")
    );
    for (x, y, share) in pts {
        let _ = write!(
            s,
            "<circle class=\"point\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"#d62728\">\
             <title>{:.1} %</title></circle>",
            share * 100.0
        );
    }
    axis_dates(&mut s, daily.keys().copied(), slot);
    s.push_str("</svg>");
    s
}

/// The SVG element with its axes and the top value's label.
fn frame(top: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\"><line x1=\"{ML}\" y1=\"{b}\" x2=\"{W}\" y2=\"{b}\" stroke=\"#000\"/>\
         <line x1=\"{ML}\" y1=\"10\" x2=\"{ML}\" y2=\"{b}\" stroke=\"#000\"/>\
         <text x=\"2\" y=\"16\" font-size=\"11\">{}</text><text x=\"2\" y=\"{b}\" font-size=\"11\">0</text>",
        esc(top),
        b = H - MB
    )
}

/// The first and last dates under the x axis.
fn axis_dates(s: &mut String, days: impl Iterator<Item = u32>, slot: f64) {
    let days: Vec<u32> = days.collect();
    if let (Some(f), Some(l)) = (days.first(), days.last()) {
        let _ = write!(
            s,
            "<text x=\"{ML}\" y=\"{}\" font-size=\"11\">{}</text>\
             <text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            H - 8.0,
            date(*f),
            ML + slot * days.len() as f64,
            H - 8.0,
            date(*l)
        );
    }
}
