//! The phases of a migration and how long each took (`migrate
//! --timings`, the report's `phases`), on both nodes.

use std::time::Instant;

use krg_proto::migrate::PhaseTime;

/// The phases of a migration as they pass.
pub struct Clock {
    last: Instant,
    /// The phases so far.
    pub phases: Vec<PhaseTime>,
}

impl Clock {
    /// A clock that starts now.
    pub fn new() -> Self {
        Clock {
            last: Instant::now(),
            phases: Vec::new(),
        }
    }

    /// The phase since the last mark ends now.
    pub fn mark(&mut self, name: &str) {
        let now = Instant::now();
        self.phases.push(PhaseTime {
            name: name.to_string(),
            us: (now - self.last).as_micros() as u64,
        });
        self.last = now;
    }

    /// Phases measured elsewhere (inside the span of a mark), merged by name
    /// and prefixed, after the mark that holds them.
    pub fn extend(&mut self, prefix: &str, phases: &[checkpoint::timings::Phase]) {
        for (name, d) in checkpoint::timings::merged(phases) {
            self.phases.push(PhaseTime {
                name: format!("{prefix}{name}"),
                us: d.as_micros() as u64,
            });
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
