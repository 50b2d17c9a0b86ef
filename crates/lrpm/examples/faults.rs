//! A library-mode binary whose workers and configuration source misbehave
//! on demand; lrpm's integration tests (`tests/it/library.rs`) drive it.
//!
//! The source reads the file named by `LRPM_FAULTS_SOURCE` on every load:
//! a JSON job map is returned as is, and the words `panic`, `hang` and
//! `error` make the load panic, hang or fail. Every load appends a line to
//! the file's `.loads` sibling.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use lrpm::library::{ConfigurationSource, Error, Lrpm, Worker};
use serde_json::Value;

struct FileSource {
    path: String,
}

impl ConfigurationSource for FileSource {
    fn load_configuration(&mut self) -> Result<Value, Error> {
        let mut loads = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("{}.loads", self.path))?;
        writeln!(loads, "load")?;
        let text = std::fs::read_to_string(&self.path)?;
        match text.trim() {
            "panic" => panic!("the source panics on purpose"),
            "hang" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "error" => Err("the source fails on purpose".into()),
            _ => Ok(serde_json::from_str(&text)?),
        }
    }
}

/// Prints its configuration, then idles.
struct Sleeper;

impl Worker for Sleeper {
    fn start(&mut self, config: &Value) -> Result<(), Error> {
        println!("started with {config}");
        Ok(())
    }

    fn cycle(&mut self) -> Result<(), Error> {
        std::thread::sleep(Duration::from_millis(100));
        Ok(())
    }
}

/// Panics in its first cycle.
struct Panicker;

impl Worker for Panicker {
    fn start(&mut self, _config: &Value) -> Result<(), Error> {
        Ok(())
    }

    fn cycle(&mut self) -> Result<(), Error> {
        panic!("the worker panics on purpose")
    }
}

/// Fails in `start`.
struct FailsToStart;

impl Worker for FailsToStart {
    fn start(&mut self, _config: &Value) -> Result<(), Error> {
        Err("cannot connect to the queue (on purpose)".into())
    }

    fn cycle(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

/// Never returns from its cycle, so it never sees a stop request.
struct Stubborn;

impl Worker for Stubborn {
    fn start(&mut self, _config: &Value) -> Result<(), Error> {
        println!("stubborn started");
        Ok(())
    }

    fn cycle(&mut self) -> Result<(), Error> {
        std::thread::sleep(Duration::from_secs(3600));
        Ok(())
    }
}

fn main() -> ExitCode {
    Lrpm::new()
        .worker("Sleeper", || Sleeper)
        .worker("Panicker", || Panicker)
        .worker("FailsToStart", || FailsToStart)
        .worker("Stubborn", || Stubborn)
        .configuration_source(|| FileSource {
            path: std::env::var("LRPM_FAULTS_SOURCE").unwrap_or_default(),
        })
        .main()
}
