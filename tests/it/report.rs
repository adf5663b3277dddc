//! The incident responder's HTML report, on a bundled labelled capture: its structure
//! (an incident section and a plot per incident, every labelled window drawn, the
//! scenario table), determinism across runs, self-containment, and a real browser that
//! opens it from disk with the network cut off.

use crate::support::{command_ok, peer_available, repo, wattchdog};
use std::path::Path;
use std::process::Command;

const CAPTURE: &str = "replay-data/edge-power.jsonl.zst";

/// The report without its one "generated …" line.
fn body(html: &str) -> String {
    html.lines()
        .filter(|l| !l.starts_with("<p class=\"generated\">"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_html_report_shows_every_incident_and_label_and_opens_offline() {
    let _quiet = crate::support::machine_lock();
    let dir = tempfile::tempdir().unwrap();
    let (from_eval, from_replay) = (dir.path().join("eval.html"), dir.path().join("replay.html"));
    let out = command_ok(
        wattchdog()
            .args(["eval", "--json", "--report-html"])
            .arg(&from_eval)
            .arg(repo(CAPTURE)),
    );
    let score: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = command_ok(
        wattchdog()
            .args(["replay", "--json", "--report-html"])
            .arg(&from_replay)
            .arg(repo(CAPTURE)),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let eval_html = std::fs::read_to_string(&from_eval).unwrap();
    let html = std::fs::read_to_string(&from_replay).unwrap();

    // Structure: a section and a plot per incident, every labelled window, the capture's
    // digest.
    let incidents = report["incidents"].as_array().unwrap();
    assert!(!incidents.is_empty());
    assert_eq!(
        html.matches("<section class=\"incident\"").count(),
        incidents.len()
    );
    assert_eq!(
        html.matches("<figure class=\"plot\"").count(),
        incidents.len()
    );
    for inc in incidents {
        assert!(html.contains(&format!("id=\"{}\"", inc["id"].as_str().unwrap())));
    }
    let labels: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(repo("replay-data/edge-power.labels.json")).unwrap(),
    )
    .unwrap();
    for l in &labels {
        let tag = format!("data-label=\"{}\"", l["scenario"].as_str().unwrap());
        assert!(html.contains(&tag), "{tag} missing");
    }
    assert!(
        html.contains("sha256 "),
        "the capture's digest is in the header"
    );
    assert!(
        html.matches("<svg").count() > incidents.len(),
        "timeline and plots are SVG"
    );
    // The scenario table, rows linked to the incident that detected them.
    for (name, s) in score["scenarios"].as_object().unwrap() {
        assert!(eval_html.contains(&format!("<tr><td>{name}</td><td>{}/", s["detected"])));
    }
    assert!(eval_html.contains("<a href=\"#in-"));

    // Deterministic: the two runs differ only in the generated line and the table.
    let start = eval_html.find("<h2>Scenarios</h2>").unwrap();
    let end = eval_html.find("<h2>Incidents</h2>").unwrap();
    let eval_without_table = format!("{}{}", &eval_html[..start], &eval_html[end..]);
    assert_eq!(body(&eval_without_table), body(&html));

    // Self-contained: nothing to fetch, nothing to run.
    for needle in ["<script", " src=", "url(", "@import", "<link"] {
        assert!(!html.contains(needle), "the report has {needle}");
    }
    let outside_svg_ns = html.replace("http://www.w3.org/2000/svg", "");
    assert!(!outside_svg_ns.contains("http://") && !outside_svg_ns.contains("https://"));
    assert!(html.len() < 10 << 20, "{} bytes", html.len());

    // A real browser, the network cut off: no failed request, no script error.
    if peer_available(
        "chromium (apt-get install chromium)",
        Command::new("sh").args(["-c", "command -v chromium"]),
    ) {
        let url = format!("file://{}", from_replay.display());
        let browser = |extra: &[&str]| {
            Command::new("chromium")
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                ])
                .args([
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-sync",
                ])
                .args(["--disable-component-update", "--proxy-server=127.0.0.1:9"])
                .args([
                    "--enable-logging=stderr",
                    "--v=0",
                    "--window-size=1100,1600",
                ])
                .args(extra)
                .arg(&url)
                .output()
                .unwrap()
        };
        let net = dir.path().join("net.json");
        let out = browser(&["--dump-dom", &format!("--log-net-log={}", net.display())]);
        let dom = String::from_utf8_lossy(&out.stdout);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            dom.contains("class=\"incident\""),
            "the page did not render: {dom}"
        );
        for bad in [
            "Failed to load resource",
            "net::ERR_",
            "Uncaught",
            ":ERROR:CONSOLE",
        ] {
            assert!(!log.contains(bad), "{bad} while opening the report: {log}");
        }
        // Every request the browser made, from its network log, but Chromium's own
        // background calls to Google services (the report cannot cause those).
        let netlog = std::fs::read_to_string(&net).unwrap_or_default();
        assert!(netlog.contains("\"events\""), "no network log was written");
        let requests: Vec<&str> = netlog
            .split("\"url\":\"")
            .skip(1)
            .filter_map(|r| r.split('"').next())
            .filter(|u| !u.starts_with("file://") && !u.starts_with("data:"))
            .filter(|u| {
                let host = u.split('/').nth(2).unwrap_or("");
                !["google.com", "googleapis.com", "gstatic.com", "gvt1.com"]
                    .iter()
                    .any(|g| host == *g || host.ends_with(&format!(".{g}")))
            })
            .collect();
        assert!(
            requests.is_empty(),
            "the report made requests: {requests:?}"
        );
        // For humans: what the responder sees first.
        let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.png");
        browser(&[&format!("--screenshot={}", shot.display())]);
        assert!(shot.exists());
    }
}
