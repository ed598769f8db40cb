//! The offline HTML report: inline SVG drawn here, inline CSS, and the data
//! viewer (`viewer.js`, `viewer.css`, compiled in) with its payload embedded
//! as JSON. A Content-Security-Policy forbids every network request, and all
//! row text reaches the page through `textContent`, never as markup.
//! Every plot is an `<svg class="plot" id="plot-…">` whose bars are
//! `<rect class="bar">` with a `<title>` tooltip, so tests can find them in
//! the rendered DOM; the plots and tables need no script.

use std::fmt::Write as _;

use super::compare::Comparison;
use super::gate::GateOutcome;
use super::viewer::{script_json, ViewerData};
use super::{quantiles, Summary};

const VIEWER_JS: &str = include_str!("viewer.js");
const VIEWER_CSS: &str = include_str!("viewer.css");

const W: f64 = 720.0;
const H: f64 = 300.0;
const ML: f64 = 56.0; // left margin (y labels)
const MR: f64 = 16.0;
const MT: f64 = 28.0;
const MB: f64 = 56.0; // bottom margin (x labels)

const GREEN: &str = "#2e7d32";
const RED: &str = "#c62828";
const BLUE: &str = "#1565c0";
const PURPLE: &str = "#6a1b9a";

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A series of a bar chart: name, colour, one value per category.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub values: Vec<f64>,
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1000.0 || (v.fract() == 0.0 && v.abs() < 1e15) {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn svg_open(id: &str, title: &str, h: f64) -> String {
    format!(
        "<svg id=\"{id}\" class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {h}\" \
         width=\"{W}\" height=\"{h}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{h}\" fill=\"#fff\"/>",
        t = esc(title)
    )
}

fn y_axis(s: &mut String, ymax: f64, h: f64, label: &str) {
    let ph = h - MT - MB;
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let y = MT + ph - ph * f64::from(i) / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{ML}\" x2=\"{x2}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e0e0e0\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#444\">{v}</text>",
            x2 = W - MR,
            tx = ML - 6.0,
            ty = y + 4.0,
            v = fmt_num(v)
        );
    }
    let _ = write!(
        s,
        "<text x=\"14\" y=\"{y:.1}\" font-size=\"11\" fill=\"#444\" transform=\"rotate(-90 14 {y:.1})\" \
         text-anchor=\"middle\">{l}</text>",
        y = MT + ph / 2.0,
        l = esc(label)
    );
}

fn legend(s: &mut String, series: &[Series<'_>]) {
    let mut x = ML;
    for se in series {
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"8\" width=\"12\" height=\"12\" fill=\"{c}\"/>\
             <text x=\"{tx}\" y=\"18\" font-size=\"12\" fill=\"#222\">{n}</text>",
            c = se.color,
            tx = x + 16.0,
            n = esc(se.name)
        );
        x += 24.0 + 7.0 * se.name.len() as f64;
    }
}

/// Vertical grouped bar chart over categorical `labels`.
pub fn bar_chart(
    id: &str,
    title: &str,
    y_label: &str,
    labels: &[String],
    series: &[Series<'_>],
) -> String {
    let mut s = svg_open(id, title, H);
    let ymax = nice_max(
        series
            .iter()
            .flat_map(|se| se.values.iter().copied())
            .fold(0.0, f64::max),
    );
    y_axis(&mut s, ymax, H, y_label);
    legend(&mut s, series);
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let n = labels.len().max(1) as f64;
    let slot = pw / n;
    let bw = (slot * 0.8) / series.len().max(1) as f64;
    let label_every = ((labels.len() as f64 / 20.0).ceil() as usize).max(1);
    for (i, label) in labels.iter().enumerate() {
        let x0 = ML + slot * i as f64 + slot * 0.1;
        for (k, se) in series.iter().enumerate() {
            let v = se.values.get(i).copied().unwrap_or(0.0);
            let h = ph * v / ymax;
            let _ = write!(
                s,
                "<rect class=\"bar\" data-series=\"{sn}\" data-value=\"{v}\" x=\"{x:.1}\" y=\"{y:.1}\" \
                 width=\"{bw:.1}\" height=\"{h:.1}\" fill=\"{c}\"><title>{sn} {l}: {vv}</title></rect>",
                sn = esc(se.name),
                x = x0 + bw * k as f64,
                y = MT + ph - h,
                c = se.color,
                l = esc(label),
                vv = fmt_num(v)
            );
        }
        if i % label_every == 0 {
            let lx = ML + slot * (i as f64 + 0.5);
            let ly = H - MB + 14.0;
            let _ = write!(
                s,
                "<text x=\"{lx:.1}\" y=\"{ly:.1}\" font-size=\"10\" fill=\"#444\" text-anchor=\"end\" \
                 transform=\"rotate(-35 {lx:.1} {ly:.1})\">{l}</text>",
                l = esc(label)
            );
        }
    }
    let _ = write!(
        s,
        "<line x1=\"{ML}\" x2=\"{x2}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#444\"/></svg>",
        x2 = W - MR,
        y = MT + ph
    );
    s
}

/// Horizontal bar chart (long category names such as rejection reasons).
pub fn hbar_chart(id: &str, title: &str, items: &[(String, f64)], color: &str) -> String {
    let row = 22.0;
    let h = MT + 12.0 + row * items.len().max(1) as f64;
    let mut s = svg_open(id, title, h);
    let lw = 330.0;
    let pw = W - lw - MR - 50.0;
    let vmax = nice_max(items.iter().map(|i| i.1).fold(0.0, f64::max));
    let _ = write!(
        s,
        "<text x=\"8\" y=\"18\" font-size=\"12\" fill=\"#222\">{}</text>",
        esc(title)
    );
    for (i, (label, v)) in items.iter().enumerate() {
        let y = MT + row * i as f64;
        let w = pw * v / vmax;
        let short: String = label.chars().take(52).collect();
        let _ = write!(
            s,
            "<text x=\"{tx}\" y=\"{ty:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#222\">{l}</text>\
             <rect class=\"bar\" data-value=\"{v}\" x=\"{lw}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{bh}\" \
             fill=\"{color}\"><title>{full}: {v}</title></rect>\
             <text x=\"{vx:.1}\" y=\"{ty:.1}\" font-size=\"11\" fill=\"#222\">{v}</text>",
            tx = lw - 6.0,
            ty = y + 14.0,
            l = esc(&short),
            bh = row - 6.0,
            full = esc(label),
            vx = lw + w + 4.0
        );
    }
    s.push_str("</svg>");
    s
}

/// Line chart of (x, y) points.
pub fn line_chart(
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    pts: &[(f64, f64)],
    color: &str,
) -> String {
    let mut s = svg_open(id, title, H);
    let ymax = nice_max(pts.iter().map(|p| p.1).fold(0.0, f64::max));
    let (xmin, xmax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let xspan = if xmax > xmin { xmax - xmin } else { 1.0 };
    y_axis(&mut s, ymax, H, y_label);
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let px = |x: f64| ML + pw * (x - xmin) / xspan;
    let py = |y: f64| MT + ph - ph * y / ymax;
    let d: Vec<String> = pts
        .iter()
        .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
        .collect();
    let _ = write!(
        s,
        "<polyline class=\"line\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
        d.join(" ")
    );
    for p in pts {
        let _ = write!(
            s,
            "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"><title>t={}s: {}</title></circle>",
            px(p.0),
            py(p.1),
            fmt_num(p.0),
            fmt_num(p.1)
        );
    }
    for i in 0..=4 {
        let x = xmin + xspan * f64::from(i) / 4.0;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#444\">{}</text>",
            px(x),
            H - MB + 16.0,
            fmt_num(x)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#444\">{}</text>\
         <line x1=\"{ML}\" x2=\"{x2}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#444\"/></svg>",
        ML + pw / 2.0,
        H - 12.0,
        esc(x_label),
        x2 = W - MR,
        y = MT + ph
    );
    s
}

/// Counts of `v` in `bins` equal bins over [lo, hi] (values outside are clamped).
pub fn histogram(v: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<f64> {
    let mut out = vec![0.0; bins];
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    for &x in v.iter().filter(|x| x.is_finite()) {
        let i = (((x - lo) / span) * bins as f64).floor();
        let i = (i.max(0.0) as usize).min(bins - 1);
        out[i] += 1.0;
    }
    out
}

fn bin_labels(lo: f64, hi: f64, bins: usize, int: bool) -> Vec<String> {
    let w = (hi - lo) / bins as f64;
    (0..bins)
        .map(|i| {
            let a = lo + w * i as f64;
            if int {
                format!("{:.0}–{:.0}", a, a + w)
            } else {
                format!("{:.2}–{:.2}", a, a + w)
            }
        })
        .collect()
}

fn card(label: &str, value: &str) -> String {
    format!(
        "<div class=\"card\"><div class=\"v\">{}</div><div class=\"l\">{}</div></div>",
        esc(value),
        esc(label)
    )
}

/// The report page of a summary alone (no viewer, no comparison).
pub fn render(summary: &Summary, title: &str) -> String {
    Page {
        summary,
        title,
        viewer: None,
        comparison: None,
        gate: None,
    }
    .render()
}

/// Everything a report page can show.
pub struct Page<'a> {
    pub summary: &'a Summary,
    pub title: &'a str,
    pub viewer: Option<&'a ViewerData>,
    /// Against the previous night.
    pub comparison: Option<&'a Comparison>,
    pub gate: Option<&'a GateOutcome>,
}

/// An HTML table, every cell escaped.
pub fn html_table(id: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = format!("<table id=\"{}\" class=\"data\"><thead><tr>", esc(id));
    for h in headers {
        let _ = write!(t, "<th>{}</th>", esc(h));
    }
    t.push_str("</tr></thead><tbody>");
    for r in rows {
        t.push_str("<tr>");
        for c in r {
            let _ = write!(t, "<td>{}</td>", esc(c));
        }
        t.push_str("</tr>");
    }
    t.push_str("</tbody></table>");
    t
}

fn headline_section(s: &Summary) -> String {
    let mut body = String::from("<section id=\"headline\"><h2>What to read first</h2>");
    body.push_str(&html_table(
        "headline-table",
        &super::HEADLINE_HEADERS,
        &s.headline_rows(),
    ));
    match &s.throughput {
        Some(t) => {
            let _ = write!(
                body,
                "<p id=\"throughput\">Throughput: <b>{:.2}</b> chains/s and <b>{:.0}</b> tokens/s per worker \
                 ({} metrics series, {:.1} s busy, {:.1} s from first to last sample).</p>",
                t.chains_per_s(),
                t.tokens_per_s(),
                t.streams,
                t.busy_seconds,
                t.span_seconds
            );
        }
        None => body
            .push_str("<p id=\"throughput\" class=\"empty\">Throughput: no metrics samples.</p>"),
    }
    let mut reasons: Vec<_> = s.by_reason_recipe.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let rows: Vec<Vec<String>> = reasons
        .iter()
        .map(|((st, re, rc), n)| vec![rc.clone(), st.clone(), re.clone(), n.to_string()])
        .collect();
    if !rows.is_empty() {
        body.push_str("<h3>Reject reasons by recipe</h3>");
        body.push_str(&html_table(
            "reasons-by-recipe",
            &["recipe", "stage", "reason", "rejected"],
            &rows,
        ));
    }
    body.push_str("</section>");
    body
}

fn gate_section(g: &GateOutcome) -> String {
    let (class, verdict) = if g.passed {
        ("pass", "passed: the output is shippable")
    } else {
        ("fail", "FAILED: the output is not shippable")
    };
    let mut body = format!(
        "<section id=\"gate\" class=\"gate {class}\"><h2>Gate {}</h2><ul>",
        esc(verdict)
    );
    for c in &g.checks {
        let _ = write!(
            body,
            "<li class=\"{}\">{}</li>",
            if c.passed { "ok" } else { "broken" },
            esc(&c.line())
        );
    }
    if g.checks.is_empty() {
        body.push_str("<li>no bounds set</li>");
    }
    body.push_str("</ul></section>");
    body
}

fn compare_section(c: &Comparison) -> String {
    use super::compare::{KS_HEADERS, METRIC_HEADERS, OVERLAP_HEADERS, REASON_HEADERS};
    let mut body = String::from("<section id=\"night-over-night\"><h2>Night over night</h2>");
    let _ = write!(
        body,
        "<p>A = <code>{}</code> (previous), B = <code>{}</code> (this night).</p>",
        esc(&c.a_label),
        esc(&c.b_label)
    );
    body.push_str(&html_table(
        "compare-metrics",
        &METRIC_HEADERS,
        &c.metric_rows(),
    ));
    body.push_str("<h3>Distributions (two-sample Kolmogorov–Smirnov)</h3>");
    body.push_str(&html_table(
        "compare-ks",
        &KS_HEADERS,
        &c.distribution_rows(),
    ));
    let bins = 20;
    let overlay = |id: &str,
                   title: &str,
                   labels: &[String],
                   hist: &dyn Fn(&[f64]) -> Vec<f64>,
                   a: &[f64],
                   b: &[f64]| {
        bar_chart(
            id,
            title,
            "chains",
            labels,
            &[
                Series {
                    name: "A (previous)",
                    color: BLUE,
                    values: hist(a),
                },
                Series {
                    name: "B (this night)",
                    color: GREEN,
                    values: hist(b),
                },
            ],
        )
    };
    body.push_str(&overlay(
        "plot-compare-reward",
        "Reward of shipped chains, A vs B",
        &bin_labels(0.0, 1.0, bins, false),
        &|v| histogram(v, 0.0, 1.0, bins),
        &c.reward_a,
        &c.reward_b,
    ));
    let tmax = c
        .tokens_a
        .iter()
        .chain(&c.tokens_b)
        .copied()
        .fold(0.0, f64::max);
    let thi = nice_max(tmax.max(1.0));
    body.push_str(&overlay(
        "plot-compare-tokens",
        "Tokens per shipped chain, A vs B",
        &bin_labels(0.0, thi, bins, true),
        &|v| histogram(v, 0.0, thi, bins),
        &c.tokens_a,
        &c.tokens_b,
    ));
    body.push_str("<h3>Reject reasons</h3>");
    body.push_str(&html_table(
        "compare-reasons",
        &REASON_HEADERS,
        &c.reason_rows(),
    ));
    body.push_str("<h3>Prompt overlap</h3>");
    body.push_str(&html_table(
        "compare-overlap",
        &OVERLAP_HEADERS,
        &[c.overlap_row()],
    ));
    body.push_str("</section>");
    body
}

impl Page<'_> {
    pub fn render(&self) -> String {
        let s = self.summary;
        let mut body = String::new();
        if let Some(g) = self.gate {
            body.push_str(&gate_section(g));
        }
        body.push_str(&headline_section(s));
        let total = s.accepted + s.rejected;
        body.push_str("<div class=\"cards\">");
        body.push_str(&card("seeds", &s.seeds.to_string()));
        body.push_str(&card("chains", &total.to_string()));
        body.push_str(&card("accepted", &s.accepted.to_string()));
        body.push_str(&card("rejected", &s.rejected.to_string()));
        if let Some(q) = quantiles(&s.reward_accepted) {
            body.push_str(&card("median reward (accepted)", &format!("{:.3}", q.p50)));
        }
        if let Some(q) = quantiles(&s.tokens) {
            body.push_str(&card("median tokens / chain", &format!("{:.0}", q.p50)));
        }
        body.push_str("</div>");

        // reward histogram, accepted vs rejected
        let bins = 20;
        let fig = |id: &str, caption: &str, svg: String| {
            format!(
                "<figure id=\"fig-{id}\"><figcaption>{}</figcaption>{svg}</figure>",
                esc(caption)
            )
        };
        body.push_str(&fig(
            "reward",
            "Reward (mean token confidence) per chain, accepted vs rejected",
            bar_chart(
                "plot-reward",
                "Reward histogram",
                "chains",
                &bin_labels(0.0, 1.0, bins, false),
                &[
                    Series {
                        name: "accepted",
                        color: GREEN,
                        values: histogram(&s.reward_accepted, 0.0, 1.0, bins),
                    },
                    Series {
                        name: "rejected",
                        color: RED,
                        values: histogram(&s.reward_rejected, 0.0, 1.0, bins),
                    },
                ],
            ),
        ));

        let mut reasons: Vec<(String, f64)> = s
            .by_reason
            .iter()
            .map(|((st, re), n)| (format!("{st}: {re}"), *n as f64))
            .collect();
        reasons.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if reasons.is_empty() {
            body.push_str("<figure id=\"fig-reasons\"><figcaption>Rejection reasons</figcaption><p class=\"empty\">No rejected rows.</p></figure>");
        } else {
            body.push_str(&fig(
                "reasons",
                "Rejection reasons",
                hbar_chart(
                    "plot-reasons",
                    "Rejected chains by stage and reason",
                    &reasons,
                    RED,
                ),
            ));
        }

        let tmax = s.tokens.iter().copied().fold(0.0, f64::max);
        let thi = nice_max(tmax.max(1.0));
        body.push_str(&fig(
            "tokens",
            "Tokens per accepted chain",
            bar_chart(
                "plot-tokens",
                "Tokens per chain",
                "chains",
                &bin_labels(0.0, thi, bins, true),
                &[Series {
                    name: "accepted",
                    color: BLUE,
                    values: histogram(&s.tokens, 0.0, thi, bins),
                }],
            ),
        ));

        let rmax = s.reflections.iter().copied().max().unwrap_or(0) as usize;
        let mut refl = vec![0.0; rmax + 1];
        for &r in &s.reflections {
            refl[r as usize] += 1.0;
        }
        body.push_str(&fig(
            "reflections",
            "Reflections per accepted chain",
            bar_chart(
                "plot-reflections",
                "Reflections per chain",
                "chains",
                &(0..=rmax).map(|i| i.to_string()).collect::<Vec<_>>(),
                &[Series {
                    name: "accepted",
                    color: PURPLE,
                    values: refl,
                }],
            ),
        ));

        if s.rates.is_empty() {
            body.push_str("<figure id=\"fig-throughput\"><figcaption>Throughput</figcaption><p class=\"empty\">No metrics.jsonl in the output directory.</p></figure>");
        } else {
            let pts: Vec<(f64, f64)> = s.rates.iter().map(|r| (r.t, r.chains_per_s)).collect();
            body.push_str(&fig(
                "throughput",
                "Throughput over time (chains/s)",
                line_chart(
                    "plot-throughput",
                    "Chains per second",
                    "seconds since start",
                    "chains/s",
                    &pts,
                    BLUE,
                ),
            ));
            let pts: Vec<(f64, f64)> = s.rates.iter().map(|r| (r.t, r.tokens_per_s)).collect();
            body.push_str(&fig(
                "throughput-tokens",
                "Throughput over time (tokens/s)",
                line_chart(
                    "plot-throughput-tokens",
                    "Tokens per second",
                    "seconds since start",
                    "tokens/s",
                    &pts,
                    GREEN,
                ),
            ));
        }

        body.push_str(&format!(
            "<h2>Summary table</h2><pre>{}</pre>",
            esc(&s.table())
        ));
        let summary_tab = body;
        let mut tabs =
            String::from("<nav id=\"tabs\"><a href=\"#summary\" data-tab=\"summary\">Summary</a>");
        if self.viewer.is_some() {
            tabs.push_str("<a href=\"#list\" data-tab=\"data\">Data</a>");
        }
        if self.comparison.is_some() {
            tabs.push_str("<a href=\"#compare\" data-tab=\"compare\">Night over night</a>");
        }
        tabs.push_str("</nav>");
        let mut page =
            format!("{tabs}<section id=\"tab-summary\" class=\"tab\">{summary_tab}</section>");
        if let Some(c) = self.comparison {
            let _ = write!(
                page,
                "<section id=\"tab-compare\" class=\"tab\">{}</section>",
                compare_section(c)
            );
        }
        let mut scripts = String::new();
        if let Some(v) = self.viewer {
            page.push_str(
                "<section id=\"tab-data\" class=\"tab\"><h2>Data</h2><div id=\"viewer\">\
                 <p class=\"empty\">The data viewer needs JavaScript.</p></div></section>",
            );
            let _ = write!(
                scripts,
                "<script type=\"application/json\" id=\"viewer-data\">{}</script>\
                 <script>{VIEWER_JS}</script>",
                script_json(v)
            );
        }
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <style>body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1120px}}\
             h1{{font-size:22px}}figure{{margin:18px 0;padding:8px;border:1px solid #ddd;border-radius:6px;max-width:740px}}\
             figcaption{{font-weight:600;margin-bottom:6px}}svg.plot{{max-width:100%;height:auto}}\
             .cards{{display:flex;flex-wrap:wrap;gap:10px}}.card{{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:90px}}\
             .card .v{{font-size:20px;font-weight:700}}.card .l{{font-size:12px;color:#555}}\
             pre{{font-size:12px;background:#f7f7f7;padding:8px;overflow-x:auto}}.empty{{color:#777}}\
             table.data{{border-collapse:collapse;font-size:13px;margin:8px 0}}table.data th,table.data td{{border:1px solid #ddd;padding:3px 8px;text-align:left}}\
             table.data th{{background:#f3f3f3}}.gate{{border-radius:6px;padding:4px 12px;margin:12px 0}}\
             .gate.pass{{background:#e8f5e9;border:1px solid #2e7d32}}.gate.fail{{background:#ffebee;border:1px solid #c62828}}\
             .gate li.broken{{font-weight:700;color:#b71c1c}}{VIEWER_CSS}</style>\
             </head><body><h1>{t}</h1>{page}{scripts}</body></html>\n",
            t = esc(self.title)
        )
    }
}
