//! A circuit breaker per model, per process: after `failures` consecutive
//! service failures (5xx, overload, timeouts, connection and auth errors) the
//! circuit opens and calls to the model stop; after `open_for` one probe call
//! goes through (half-open): success closes the circuit, failure opens it
//! again. Rate limiting (429) and bad requests say nothing about the model's
//! health and leave it alone.
//!
//! Per process rather than in Redis: each worker learns within a few calls,
//! and a flaky Redis cannot make a healthy model look dead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};

use super::CircuitSettings;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

impl State {
    fn gauge(self) -> f64 {
        match self {
            State::Closed { .. } => 0.0,
            State::HalfOpen { .. } => 1.0,
            State::Open { .. } => 2.0,
        }
    }

    fn label(self) -> &'static str {
        match self {
            State::Closed { .. } => "closed",
            State::HalfOpen { .. } => "half_open",
            State::Open { .. } => "open",
        }
    }
}

/// What a call did, as the breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// Neither (429, bad request): only frees a half-open probe.
    Neutral,
}

#[derive(Debug, Default)]
pub struct Breakers {
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    /// Whether a call to `model` may go now. In half-open, only one may.
    pub fn allow(&self, model: &str, settings: CircuitSettings) -> bool {
        if settings.failures == 0 {
            return true;
        }
        let mut states = self.states.lock().expect("breaker lock");
        let state = state_of(&mut states, model);
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                transition(model, state, State::HalfOpen { probing: true });
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                true
            }
            State::HalfOpen { probing: true } => false,
        }
    }

    pub fn record(&self, model: &str, settings: CircuitSettings, verdict: Verdict) {
        if settings.failures == 0 {
            return;
        }
        let mut states = self.states.lock().expect("breaker lock");
        let state = state_of(&mut states, model);
        let open = State::Open {
            until: Instant::now() + settings.open_for,
        };
        let next = match (*state, verdict) {
            (State::Closed { failures }, Verdict::Failure) if failures + 1 >= settings.failures => {
                open
            }
            (State::Closed { failures }, Verdict::Failure) => State::Closed {
                failures: failures + 1,
            },
            (State::Closed { .. }, Verdict::Success) => State::Closed { failures: 0 },
            (State::HalfOpen { .. }, Verdict::Success) => State::Closed { failures: 0 },
            (State::HalfOpen { .. }, Verdict::Failure) => open,
            (State::HalfOpen { .. }, Verdict::Neutral) => State::HalfOpen { probing: false },
            // Calls that started before the circuit opened change nothing.
            (current, _) => current,
        };
        transition(model, state, next);
    }

    /// Seconds until the circuit of `model` half-opens (None when not open).
    pub fn open_for(&self, model: &str) -> Option<Duration> {
        let states = self.states.lock().expect("breaker lock");
        match states.get(model) {
            Some(State::Open { until }) => Some(until.saturating_duration_since(Instant::now())),
            _ => None,
        }
    }
}

/// The state of `model`'s circuit, created closed; the model's name is
/// copied only the first time (this runs on every call).
fn state_of<'a>(states: &'a mut HashMap<String, State>, model: &str) -> &'a mut State {
    if !states.contains_key(model) {
        states.insert(model.to_owned(), State::Closed { failures: 0 });
    }
    states.get_mut(model).expect("inserted above")
}

fn transition(model: &str, state: &mut State, next: State) {
    if std::mem::discriminant(state) != std::mem::discriminant(&next) {
        gauge!("assay_llm_circuit_state", "model" => model.to_owned()).set(next.gauge());
        counter!("assay_llm_circuit_transitions_total", "model" => model.to_owned(), "to" => next.label())
            .increment(1);
        match next {
            State::Open { .. } => tracing::warn!(model, "circuit opened: calls stop for a while"),
            State::HalfOpen { .. } => tracing::info!(model, "circuit half-open: one probe call"),
            State::Closed { .. } => tracing::info!(model, "circuit closed"),
        }
    }
    *state = next;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: CircuitSettings = CircuitSettings {
        failures: 3,
        open_for: Duration::from_millis(50),
    };

    #[test]
    fn opens_after_consecutive_failures_then_half_opens_for_one_probe() {
        let breakers = Breakers::default();
        for _ in 0..2 {
            assert!(breakers.allow("m", SETTINGS));
            breakers.record("m", SETTINGS, Verdict::Failure);
        }
        // A success resets the count.
        breakers.record("m", SETTINGS, Verdict::Success);
        for _ in 0..3 {
            assert!(breakers.allow("m", SETTINGS));
            breakers.record("m", SETTINGS, Verdict::Failure);
        }
        assert!(!breakers.allow("m", SETTINGS), "open after 3 failures");
        assert!(breakers.open_for("m").is_some());
        assert!(breakers.allow("other", SETTINGS), "per model");
        std::thread::sleep(Duration::from_millis(60));
        assert!(breakers.allow("m", SETTINGS), "half-open: one probe");
        assert!(!breakers.allow("m", SETTINGS), "only one probe at a time");
        breakers.record("m", SETTINGS, Verdict::Failure);
        assert!(
            !breakers.allow("m", SETTINGS),
            "a failed probe opens it again"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(breakers.allow("m", SETTINGS));
        breakers.record("m", SETTINGS, Verdict::Neutral);
        assert!(
            breakers.allow("m", SETTINGS),
            "a neutral probe frees the slot"
        );
        breakers.record("m", SETTINGS, Verdict::Success);
        assert!(
            breakers.allow("m", SETTINGS) && breakers.allow("m", SETTINGS),
            "closed"
        );
    }

    #[test]
    fn zero_failures_disables_it() {
        let breakers = Breakers::default();
        let off = CircuitSettings {
            failures: 0,
            open_for: Duration::ZERO,
        };
        for _ in 0..100 {
            breakers.record("m", off, Verdict::Failure);
        }
        assert!(breakers.allow("m", off));
    }
}
