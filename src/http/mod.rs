//! HTTP/1.1: the pure request-head parser and response writer ([`parse`]) and the per-connection
//! driver on the shard ([`conn`]).

pub mod conn;
pub mod parse;

use std::cell::RefCell;
use std::time::{Duration, Instant, SystemTime};

thread_local! {
    static DATE: RefCell<(Instant, String)> =
        RefCell::new((Instant::now(), httpdate::fmt_http_date(SystemTime::now())));
}

/// The current HTTP `Date` value, formatted at most once a second per shard thread.
pub fn http_date() -> String {
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0.elapsed() >= Duration::from_secs(1) {
            *d = (Instant::now(), httpdate::fmt_http_date(SystemTime::now()));
        }
        d.1.clone()
    })
}
