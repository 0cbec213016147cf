//! HTTP/1.1, pure: the request-head parser and response writer ([`parse`]) and the
//! [`Response`] a handler gives. The driver that runs them on a connection is the shard's
//! ([`crate::shard::http`]).

pub mod parse;
mod response;

pub use response::Response;

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
