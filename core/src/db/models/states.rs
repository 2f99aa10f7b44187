//! The states of evaluations and their chunks, and every move between them.
//!
//! A state is an enum, stored as CHECK-constrained text and converted in one
//! place ([`text_states!`]), so a misspelt state does not compile and a new
//! one does not compile until every `match` on it handles it. The moves are
//! listed once, below; the guards of the queries in [`super::lifecycle`] and
//! [`super::chunks`] read them, so this list is what may happen.

use diesel::deserialize::{self, FromSql};
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;

/// Declares a state enum stored as text: its variants and their spellings,
/// once. Generates `as_str`, `ALL`, `FromStr`, `Display`, serde and the
/// diesel mapping to `Text`.
macro_rules! text_states {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash,
            serde::Serialize, serde::Deserialize,
            diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
        )]
        #[diesel(sql_type = Text)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub enum $name {
            $( $(#[$variant_meta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// `'a', 'b'`: for an `IN (...)` in hand-written SQL, where a
            /// literal (unlike a bound parameter) lets the planner use the
            /// partial indexes on these states.
            pub fn sql_list(states: &[Self]) -> String {
                states
                    .iter()
                    .map(|state| format!("'{}'", state.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(
                        concat!("unknown ", stringify!($name), " {:?}"),
                        other
                    )),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ToSql<Text, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
            }
        }

        impl FromSql<Text, Pg> for $name {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
                Ok(text.parse()?)
            }
        }
    };
}

text_states! {
    /// Where an evaluation is: `queued` -> `running` -> `succeeded` |
    /// `failed` | `canceled`.
    pub enum EvaluationStatus {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Canceled = "canceled",
    }
}

impl EvaluationStatus {
    pub fn is_terminal(self) -> bool {
        match self {
            EvaluationStatus::Queued | EvaluationStatus::Running => false,
            EvaluationStatus::Succeeded | EvaluationStatus::Failed | EvaluationStatus::Canceled => {
                true
            }
        }
    }
}

text_states! {
    /// Where a chunk is: `pending` -> `queued` (pushed under a job id) ->
    /// `running` (a worker holds its lease) -> `done`; `canceled` when its
    /// evaluation is canceled or fails.
    pub enum ChunkStatus {
        Pending = "pending",
        Queued = "queued",
        Running = "running",
        Done = "done",
        Canceled = "canceled",
    }
}

impl ChunkStatus {
    /// Work is left in it.
    pub fn is_unfinished(self) -> bool {
        match self {
            ChunkStatus::Pending | ChunkStatus::Queued | ChunkStatus::Running => true,
            ChunkStatus::Done | ChunkStatus::Canceled => false,
        }
    }
}

/// A move of one row: the states it may leave, the state it enters. The
/// query making the move filters on `from` (a guarded UPDATE), so a job
/// delivered twice cannot make it twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move<S: 'static> {
    pub name: &'static str,
    pub from: &'static [S],
    pub to: S,
}

use ChunkStatus as C;
use EvaluationStatus as E;

/// Every move of an evaluation.
pub mod evaluation_moves {
    use super::{E, Move};

    /// Written by a submission; a resume or retry-errors comes back to it.
    pub const CREATED: E = E::Queued;
    /// The first chunk to start moves it on (with `evaluation.started`).
    pub const START: Move<E> = Move {
        name: "start",
        from: &[E::Queued],
        to: E::Running,
    };
    /// Its last chunk is done: the summary is written (with `evaluation.succeeded`).
    pub const FINALIZE: Move<E> = Move {
        name: "finalize",
        from: &[E::Running],
        to: E::Succeeded,
    };
    /// A user or a budget stops it; unfinished chunks are canceled.
    pub const CANCEL: Move<E> = Move {
        name: "cancel",
        from: &[E::Queued, E::Running],
        to: E::Canceled,
    };
    /// It cannot run (a permanent error); unfinished chunks are canceled.
    pub const FAIL: Move<E> = Move {
        name: "fail",
        from: &[E::Queued, E::Running],
        to: E::Failed,
    };
    /// Finish what is missing, as run `run + 1`.
    pub const RESUME: Move<E> = Move {
        name: "resume",
        from: &[E::Failed, E::Canceled],
        to: E::Queued,
    };
    /// Run the errored results again (and what is missing), as run `run + 1`.
    pub const RETRY_ERRORS: Move<E> = Move {
        name: "retry-errors",
        from: &[E::Succeeded, E::Failed, E::Canceled],
        to: E::Queued,
    };

    pub const ALL: &[Move<E>] = &[START, FINALIZE, CANCEL, FAIL, RESUME, RETRY_ERRORS];

    /// The states in which its chunks may still run.
    pub const UNFINISHED: &[E] = &[E::Queued, E::Running];
}

/// Every move of a chunk.
pub mod chunk_moves {
    use super::{C, Move};

    /// Written by planning; reopening comes back to it.
    pub const PLANNED: C = C::Pending;
    /// Pushed under a fresh job id (at most a few per evaluation at once).
    pub const QUEUE: Move<C> = Move {
        name: "queue",
        from: &[C::Pending],
        to: C::Queued,
    };
    /// A worker takes its lease: a delivered job, or one whose previous
    /// worker's lease expired (a crash, counted).
    pub const START: Move<C> = Move {
        name: "start",
        from: &[C::Pending, C::Queued, C::Running],
        to: C::Running,
    };
    /// Every run of its range has a result.
    pub const DONE: Move<C> = Move {
        name: "done",
        from: &[C::Running],
        to: C::Done,
    };
    /// Its worker hands it back (shutdown, a transient failure).
    pub const RELEASE: Move<C> = Move {
        name: "release",
        from: &[C::Running],
        to: C::Queued,
    };
    /// The sweeper pushes again a chunk whose push or worker was lost.
    pub const REQUEUE: Move<C> = Move {
        name: "requeue",
        from: &[C::Queued, C::Running],
        to: C::Queued,
    };
    /// Its evaluation is canceled or fails.
    pub const CANCEL: Move<C> = Move {
        name: "cancel",
        from: &[C::Pending, C::Queued, C::Running],
        to: C::Canceled,
    };
    /// Its evaluation resumes: everything not done runs again.
    pub const REOPEN: Move<C> = Move {
        name: "reopen",
        from: &[C::Pending, C::Queued, C::Running, C::Canceled],
        to: C::Pending,
    };
    /// Its evaluation retries errors: a done chunk holding one runs again.
    pub const REOPEN_DONE: Move<C> = Move {
        name: "reopen-done",
        from: &[C::Done],
        to: C::Pending,
    };

    pub const ALL: &[Move<C>] = &[
        QUEUE,
        START,
        DONE,
        RELEASE,
        REQUEUE,
        CANCEL,
        REOPEN,
        REOPEN_DONE,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_spelling() {
        for state in EvaluationStatus::ALL {
            assert_eq!(state.as_str().parse::<EvaluationStatus>(), Ok(*state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::Value::from(state.as_str())
            );
        }
        for state in ChunkStatus::ALL {
            assert_eq!(state.as_str().parse::<ChunkStatus>(), Ok(*state));
        }
        assert!("Queued".parse::<EvaluationStatus>().is_err());
        assert_eq!(
            ChunkStatus::sql_list(&[ChunkStatus::Pending, ChunkStatus::Queued]),
            "'pending', 'queued'"
        );
    }

    #[test]
    fn every_state_is_reachable_and_terminal_states_leave_only_by_reopening() {
        for state in EvaluationStatus::ALL {
            let entered = *state == evaluation_moves::CREATED
                || evaluation_moves::ALL.iter().any(|step| step.to == *state);
            assert!(entered, "no move enters {state}");
        }
        for step in evaluation_moves::ALL {
            let reopens = step.to == evaluation_moves::CREATED;
            assert!(
                reopens || step.from.iter().all(|state| !state.is_terminal()),
                "{} leaves a finished evaluation without reopening it",
                step.name
            );
        }
        for state in ChunkStatus::ALL {
            let entered = *state == chunk_moves::PLANNED
                || chunk_moves::ALL.iter().any(|step| step.to == *state);
            assert!(entered, "no move enters {state}");
        }
        // Cancel stops exactly the chunks with work left.
        let unfinished: Vec<_> = ChunkStatus::ALL
            .iter()
            .copied()
            .filter(|state| state.is_unfinished())
            .collect();
        assert_eq!(chunk_moves::CANCEL.from, unfinished.as_slice());
    }
}
