//! Progress on stderr: the CLI's implementation of the engine's `Reporter`.
//!
//! On a terminal: one indicatif line per host (its current step) under an
//! overall bar for the phase. Elsewhere (CI logs, pipes), with `-v`, or with
//! `--output json`: plain lines, and only the ones worth keeping.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rampart::engine::Reporter;
use rampart::words::count;

pub enum Progress {
    Bars(Bars),
    Plain { verbose: bool },
}

pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    hosts: Mutex<BTreeMap<String, ProgressBar>>,
}

impl Progress {
    /// Bars when stderr is a terminal and nothing asks for plain lines.
    pub fn new(verbose: bool, quiet: bool) -> Progress {
        if quiet || verbose || !std::io::stderr().is_terminal() {
            return Progress::Plain { verbose };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} hosts {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        Progress::Bars(Bars {
            multi,
            overall,
            hosts: Mutex::new(BTreeMap::new()),
        })
    }

    /// Clears the bars (before the summary is printed).
    pub fn finish(&self) {
        if let Progress::Bars(b) = self {
            for bar in b.hosts.lock().expect("no panics while held").values() {
                bar.finish_and_clear();
            }
            b.overall.finish_and_clear();
        }
    }
}

impl Bars {
    fn host(&self, host: &str) -> ProgressBar {
        let mut hosts = self.hosts.lock().expect("no panics while held");
        hosts
            .entry(host.to_string())
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("  {spinner} {prefix:12} {msg}")
                        .expect("static template"),
                );
                bar.set_prefix(host.to_string());
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            })
            .clone()
    }
}

impl Reporter for Progress {
    fn phase(&self, name: &str, title: &str, hosts: usize) {
        match self {
            Progress::Bars(b) => {
                b.overall.set_prefix(name.to_string());
                b.overall.set_message(title.to_string());
                b.overall.set_length(hosts as u64);
                b.overall.set_position(0);
            }
            Progress::Plain { .. } => eprintln!("==> {title} ({})", count(hosts, "host")),
        }
    }
    fn step(&self, host: &str, step: &str) {
        match self {
            Progress::Bars(b) => b.host(host).set_message(step.to_string()),
            Progress::Plain { verbose: true } => eprintln!("{host}: {step}"),
            Progress::Plain { verbose: false } => {}
        }
    }
    fn line(&self, host: &str, line: &str) {
        match self {
            Progress::Bars(b) => {
                let _ = b.multi.println(format!("{host}: {line}"));
            }
            Progress::Plain { .. } => eprintln!("{host}: {line}"),
        }
    }
    fn done(&self, host: &str) {
        if let Progress::Bars(b) = self {
            b.overall.inc(1);
            b.host(host).set_message("done");
        }
    }
}
