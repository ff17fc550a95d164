//! What the tests that run `hutong demo` share.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_hutong");

pub struct Demo {
    pub child: Child,
    pub lines: Vec<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a small demo and reads its guide up to "Press Ctrl-C".
pub fn start(dir: &std::path::Path) -> Demo {
    let child = Command::new(BIN)
        .args([
            "demo",
            "--residents",
            "150",
            "--institutions",
            "8",
            "--years",
            "2",
        ])
        .args(["--listen", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .env("HUTONG_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Owned by the guard at once, so the process is reaped on every path, panics included.
    let mut demo = Demo {
        child,
        lines: Vec::new(),
    };
    let out = demo.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            if tx.send(l.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(240)) {
            Ok(l) => {
                let done = l.contains("Press Ctrl-C");
                demo.lines.push(l);
                if done {
                    return demo;
                }
            }
            Err(_) => panic!("demo did not come up; output so far: {:#?}", demo.lines),
        }
    }
}
