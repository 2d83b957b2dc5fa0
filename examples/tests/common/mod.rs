//! Shared by the tests that run the example binaries as processes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bin` with `args` and the environment `env`, and returns it with the line it
/// prints once serving (`{name} ...`); log lines before and after it are read and dropped,
/// so its stdout never fills up.
pub fn start(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (Proc, String) {
    let name = bin.rsplit('/').next().unwrap().to_owned();
    let mut child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} printed its start line"));
    std::thread::spawn(move || lines.for_each(drop));
    (Proc(child), line)
}

/// The value after `key=` in a start line: `field("gateway g1 http=127.0.0.1:1", "http")`.
pub fn field(line: &str, key: &str) -> String {
    line.split(&format!("{key}="))
        .nth(1)
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}
