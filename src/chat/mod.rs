//! Identities and chat on a node: who is online where, presence, and message delivery with
//! `sent` / `delivered` / `read` acknowledgements, for the native protocol at `/ws`
//! ([`session`]) and the embeddable API ([`router`]).
//!
//! # Ownership (shared nothing)
//! - A user's **home shard**, `hash(tenant, user) % shards`, keeps the user's sessions (on any
//!   shard), the sessions watching the user's presence, and the user's offline queue. Logins,
//!   logouts and deliveries to the user are all serialised there, so a message can never fall
//!   between "the user has no session" and "the user just connected".
//! - A conversation's **owner shard**, `hash(conversation key) % shards`, stores its messages,
//!   de-duplicates client `msgId`s and assigns order, and sends the sender's acks.
//!
//! A direct message from A (session on shard S) to B travels S → owner(conversation) [stored,
//! `ack sent` to S] → home(B) [to each of B's sessions, or B's offline queue] → each session's
//! shard [queued on the socket] → owner(conversation) [marked delivered once, `ack delivered`
//! to S]. Every hop is a FIFO ring (or the local queue when both ends are one shard), and the
//! acks for one message both travel owner → S on one ring, so a sender sees `sent` before
//! `delivered`, and its messages' acks in the order it sent them.
//!
//! Each shard runs one chat worker that takes [`ChatMsg`]s in arrival order and awaits the
//! store for each, so store operations of one conversation happen in order even when the
//! store answers asynchronously.
//!
//! # Files
//! - `msg.rs`: the work messages between shards ([`ChatMsg`], [`ChatTask`], [`Delivery`],
//!   [`UserKey`]) and who owns what ([`home_shard`], [`post`]).
//! - `hub.rs`: a shard's [`Hub`], its worker and inbox watermarks, and the dispatch of each
//!   [`ChatMsg`] to the two files below.
//! - `directory.rs`: identities and presence: logins, logouts, watchers, kicks, and the
//!   queries and sends addressed to a user ([`identity_sessions`], [`send_to_identity`]).
//! - `delivery.rs`: storing messages, routing them to sessions or the offline queue, the
//!   `delivered` / `read` acks, routing again what every session missed, and paced sends
//!   ([`send_paced`]).
//! - `encode.rs`: the frames the worker sends ([`encode_message`], pages of history).
//! - [`session`]: the native protocol's sessions at `/ws`; [`envelope`]: its wire format;
//!   [`router`]: the embeddable API; `config.rs`: the `[chat]` section ([`ChatConfig`]).

mod cluster;
mod config;
mod delivery;
mod directory;
mod encode;
pub mod envelope;
mod hub;
mod msg;
pub mod router;
pub mod session;

pub use config::{ChatConfig, ChatSection, DuplicateLogin};
pub use delivery::send_paced;
pub use directory::{identity_sessions, is_online, online_count, send_to_identity, CLOSE_KICKED};
pub use encode::encode_message;
pub use hub::Hub;
pub use msg::{home_shard, now_ms, post, ChatMsg, ChatTask, Delivery, UserKey};
