//! # minichat-core
//!
//! The library behind Minichat, a real-time chat backend. It has no HTTP in it: an application
//! embeds it directly, and `minichat-server` mounts it as REST and WebSocket endpoints.
//!
//! - [`model`]: users, messages and every validation rule.
//! - [`ChatService`]: the contract every transport uses; [`Chat`] implements it over three
//!   seams: [`storage::Storage`], [`cache::RecentCache`] and [`broker::Broker`].
//! - [`Hub`]: the transport-agnostic fan-out of events to this node's subscribers.
//! - [`stream`]: a user's resumable stream over a [`ChatService`], in seq order without gaps or
//!   duplicates: what a transport or an embedding application reads.
//! - [`telemetry`]: the metrics it records through the `metrics` facade.
//!
//! A chat in a few lines: no database, no Redis, everything in this process. Every transport
//! talks to the chat through [`ChatService`]; a subscription receives the user's [`Event`]s, each
//! the JSON frame a client would get (the message and its `seq`, the user's own gapless update
//! number), serialised once for that user.
//!
//! ```
//! use minichat_core::{Chat, ChatService, NewMessage, NewUser};
//!
//! #[tokio::main]
//! async fn main() -> minichat_core::Result<()> {
//!     let chat = Chat::in_memory();
//!     let alice = chat.create_user(NewUser { username: "alice".into(), display_name: None }).await?;
//!     let bob = chat.create_user(NewUser { username: "bob".into(), display_name: None }).await?;
//!
//!     let mut inbox = chat.subscribe(bob.id).await?;
//!     let sent = chat
//!         .send_message(
//!             NewMessage::to_user(alice.id, bob.id, "hi"),
//!             None,
//!         )
//!         .await?;
//!     assert!(sent.delivered);
//!
//!     let event = inbox.recv().await.expect("bob is subscribed");
//!     assert_eq!(event.seq, Some(1)); // bob's first event
//!     let frame: serde_json::Value = serde_json::from_slice(&event.payload).expect("JSON");
//!     assert_eq!(frame["type"], "message");
//!     assert_eq!(frame["sender_username"], "alice");
//!     assert_eq!(frame["content"], "hi");
//!     Ok(())
//! }
//! ```
//!
//! With PostgreSQL and Redis, build the chat with [`Chat::connect`] and a [`ChatConfig`] naming
//! them (`database_url`, `redis_url`; `..ChatConfig::default()` for the rest).

pub mod broker;
pub mod cache;
mod error;
pub mod event;
mod health;
pub mod hub;
pub mod model;
mod redis_support;
mod service;
pub mod storage;
pub mod stream;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;

pub use error::{Backend, Error, Result};
pub use event::Presence;
pub use health::{BackendKind, BackendStatus, Health};
pub use hub::{Closed, ConnectionId, Event, Hub, Subscription};
pub use model::{
    HistoryRequest, Message, MessageId, NewMessage, NewUser, ReadState, Seq, User, UserId,
    UserSearchRequest, ValidationError,
};
pub use redis_support::RedisConfig;
pub use service::{
    Chat, ChatConfig, ChatService, SentMessage, DEFAULT_BACKEND_TIMEOUT, HEALTH_CHECK_TIMEOUT,
};
pub use stream::EventStream;
