//! Progress of a long read: a bar with rate and ETA on a terminal, a plain line every few
//! seconds otherwise (logs, CI, a pipe), always on stderr so stdout stays the result.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::time::format_duration;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, lines otherwise.
    Auto,
    /// Plain lines every few seconds.
    Lines,
    /// Nothing (library callers, benchmarks).
    Hidden,
}

enum Display {
    Bar(ProgressBar),
    Lines { every: Duration, last: Instant },
    Hidden,
}

/// Offsets read out of a known total, and records sent.
pub struct Progress {
    display: Display,
    label: String,
    total: u64,
    read: u64,
    sent: u64,
    started: Instant,
}

impl Progress {
    /// Progress of `label` over `total` offsets.
    pub fn new(mode: ProgressMode, label: &str, total: u64) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Auto,
            ProgressMode::Auto => ProgressMode::Lines,
            other => other,
        };
        let display = match mode {
            ProgressMode::Auto => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{spinner} {prefix} [{bar:30}] {human_pos}/{human_len} read, {msg}, eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(label.to_owned());
                bar.set_message("0 sent");
                bar.enable_steady_tick(Duration::from_millis(200));
                Display::Bar(bar)
            }
            ProgressMode::Lines => Display::Lines {
                every: Duration::from_secs(2),
                last: Instant::now(),
            },
            ProgressMode::Hidden => Display::Hidden,
        };
        Self {
            display,
            label: label.to_owned(),
            total,
            read: 0,
            sent: 0,
            started: Instant::now(),
        }
    }

    /// Counts `read` more offsets read and sets the records sent so far.
    pub fn update(&mut self, read: u64, sent: u64) {
        self.read += read;
        self.sent = sent;
        match &mut self.display {
            Display::Bar(bar) => {
                bar.set_position(self.read.min(self.total));
                let rate = self.read as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!("{sent} sent, {rate:.0} records/s"));
            }
            Display::Lines { every, last } => {
                if last.elapsed() >= *every {
                    *last = Instant::now();
                    eprintln!("{}", self.line());
                }
            }
            Display::Hidden => {}
        }
    }

    /// The plain progress line.
    pub fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.read as f64 / elapsed;
        let eta = if rate > 0.0 {
            format_duration(Duration::from_secs_f64(
                self.total.saturating_sub(self.read) as f64 / rate,
            ))
        } else {
            "unknown".to_owned()
        };
        format!(
            "{}: {} of {} offsets read, {} sent, {:.0} offsets/s, eta {eta}",
            self.label, self.read, self.total, self.sent, rate
        )
    }

    /// Prints a message without breaking the bar.
    pub fn note(&self, message: &str) {
        match &self.display {
            Display::Bar(bar) => bar.println(message),
            Display::Lines { .. } => eprintln!("{message}"),
            Display::Hidden => {}
        }
    }

    /// Removes the bar, or prints a last line.
    pub fn finish(&mut self) {
        match &self.display {
            Display::Bar(bar) => bar.finish_and_clear(),
            Display::Lines { .. } => eprintln!("{}", self.line()),
            Display::Hidden => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_line_says_how_far_and_how_fast() {
        let mut progress = Progress::new(ProgressMode::Hidden, "replay r-1", 100);
        progress.update(25, 20);
        let line = progress.line();
        assert!(
            line.starts_with("replay r-1: 25 of 100 offsets read, 20 sent, "),
            "{line}"
        );
        assert!(line.contains("offsets/s, eta "), "{line}");
    }
}
