//! The cases (a)–(f): which requests are sent, and how durably firehose-edge queues them.

use std::sync::Arc;

use bytes::Bytes;
use firehose_edge::config::Durability;

use crate::common;

/// One request body of a case, and the events it carries.
#[derive(Clone)]
pub struct Body {
    pub path: &'static str,
    pub bytes: Bytes,
    pub events: u64,
    /// `@ID@` in `bytes` is replaced by an id unique to each request, so that every message
    /// has its own `messageId` and the dedup window is checked and grown, never hit.
    pub unique_ids: bool,
}

pub struct Case {
    pub letter: char,
    pub name: &'static str,
    pub durability: Durability,
    /// Sent in turn; each connection starts at a different one.
    pub bodies: Arc<[Body]>,
}

/// The cases whose letters are in `letters`, in table order.
pub fn selected(letters: &str) -> Vec<Case> {
    let cases: Vec<Case> = all()
        .into_iter()
        .filter(|c| letters.contains(c.letter))
        .collect();
    assert!(!cases.is_empty(), "THROUGHPUT_CASES selects no case");
    cases
}

fn track(events: usize, user: usize) -> Body {
    Body {
        path: "/track",
        bytes: common::track_body(events, user).into(),
        events: events as u64,
        unique_ids: false,
    }
}

/// A Segment `track` message on its own, with a `messageId` to make unique.
fn v1_track(user: usize) -> Body {
    Body {
        path: "/v1/track",
        bytes: common::segment_message(user, 0, "@ID@").into(),
        events: 1,
        unique_ids: true,
    }
}

fn v1_batch(events: usize, user: usize) -> Body {
    Body {
        path: "/v1/batch",
        bytes: common::v1_batch_body(events, user, "@ID@").into(),
        events: events as u64,
        unique_ids: true,
    }
}

fn all() -> Vec<Case> {
    // A few users, so that bodies are not all identical.
    let users = 0..8;
    let track_1: Arc<[Body]> = users.clone().map(|u| track(1, u)).collect();
    let mix: Arc<[Body]> = users
        .clone()
        .flat_map(|u| {
            // Mostly events, with the occasional alias and profile update: 3:1:1.
            [
                track(1, u),
                track(1, u + 100),
                track(1, u + 200),
                Body {
                    path: "/alias",
                    bytes: common::alias_body(u).into(),
                    events: 1,
                    unique_ids: false,
                },
                Body {
                    path: "/profile",
                    bytes: common::profile_body(u).into(),
                    events: 1,
                    unique_ids: false,
                },
            ]
        })
        .collect();
    vec![
        Case {
            letter: 'a',
            name: "(a) track 1 ev, fsync",
            durability: Durability::Fsync,
            bodies: track_1.clone(),
        },
        Case {
            letter: 'b',
            name: "(b) track 1 ev, interval",
            durability: Durability::Interval,
            bodies: track_1,
        },
        Case {
            letter: 'c',
            name: "(c) track 100 ev, fsync",
            durability: Durability::Fsync,
            bodies: users.map(|u| track(100, u)).collect(),
        },
        Case {
            letter: 'd',
            name: "(d) mix 3:1:1, fsync",
            durability: Durability::Fsync,
            bodies: mix,
        },
        Case {
            letter: 'e',
            name: "(e) v1/track 1, dedup",
            durability: Durability::Fsync,
            bodies: (0..8).map(v1_track).collect(),
        },
        Case {
            letter: 'f',
            name: "(f) v1/batch 100, dedup",
            durability: Durability::Fsync,
            bodies: (0..8).map(|u| v1_batch(100, u)).collect(),
        },
    ]
}
