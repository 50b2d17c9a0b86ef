//! php-lrpm's bare-bones example, ported: `MockConfigurationSource` declares
//! three jobs of `MockWorker`.
//!
//! Job 42's `mtime` is the time of every load, so it restarts on every poll;
//! jobs 23 and 33 keep the time the source was made, so they never do.
//!
//! ```sh
//! cargo run --example mock -- --interval 5
//! lrpmctl status
//! ```

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lrpm::library::{ConfigurationSource, Error, Lrpm, Worker};
use serde_json::{Value, json};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Declares jobs 23, 42 and 33.
struct MockConfigurationSource {
    created: u64,
}

impl ConfigurationSource for MockConfigurationSource {
    fn load_configuration(&mut self) -> Result<Value, Error> {
        let job = |name: &str, mtime: u64| json!({"name": name, "workerClass": "MockWorker", "mtime": mtime, "workerConfig": {}});
        Ok(json!({
            "23": job("twenty-three", self.created),
            "42": job("forty-two", unix_now()),
            "33": job("thirty-three", self.created),
        }))
    }
}

/// Says so when it starts, and on every cycle.
struct MockWorker;

impl Worker for MockWorker {
    fn start(&mut self, _config: &Value) -> Result<(), Error> {
        println!("MockWorker initialized");
        Ok(())
    }

    fn cycle(&mut self) -> Result<(), Error> {
        println!("MockWorker cycle");
        std::thread::sleep(Duration::from_secs(2));
        Ok(())
    }
}

fn main() -> ExitCode {
    Lrpm::new()
        .worker("MockWorker", || MockWorker)
        .configuration_source(|| MockConfigurationSource {
            created: unix_now(),
        })
        .main()
}
