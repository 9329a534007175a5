//! # minichat
//!
//! Minichat is a real-time chat backend that you can run as a server or embed in your own Rust
//! program. This crate is the facade: it adds no code of its own, it re-exports the two crates
//! that do the work, so one dependency gives you both.
//!
//! - [`core`] (`minichat-core`): the library. The chat model and its validation rules, the
//!   [`ChatService`] contract and [`Chat`], its implementation over in-memory, PostgreSQL and
//!   Redis backends, and the [`Hub`] that fans events out to this node's subscribers. It has no
//!   HTTP in it. Its public items are also re-exported at the root of this crate, so
//!   `minichat::Chat` and `minichat::core::Chat` are the same type.
//! - [`server`] (`minichat-server`): the hyper server that mounts a [`ChatService`] as the REST
//!   and WebSocket API (the binary `minichat-server` is built from it), for when you want the
//!   endpoints inside your own process.
//!
//! Depend on `minichat-core` alone if you only embed the library and want fewer dependencies.
//!
//! ## Embedding, with no server
//!
//! ```no_run
//! # async fn demo() -> minichat::Result<()> {
//! use minichat::{Chat, ChatService, NewMessage, NewUser};
//!
//! let chat = Chat::in_memory();
//! let alice = chat.create_user(NewUser { username: "alice".into(), display_name: None }).await?;
//! let bob = chat.create_user(NewUser { username: "bob".into(), display_name: None }).await?;
//! let mut inbox = chat.subscribe(bob.id).await?;
//! chat.send_message(
//!     NewMessage::to_user(alice.id, bob.id, "hi"),
//!     None,
//! )
//! .await?;
//! let event = inbox.recv().await.expect("delivered");
//! println!("{}", String::from_utf8_lossy(&event.payload));
//! # Ok(()) }
//! ```
//!
//! A runnable version is `examples/embedded.rs` (`cargo run --example embedded`). To use
//! PostgreSQL and Redis instead of memory, build the chat with [`Chat::connect`] and a
//! [`ChatConfig`] that names them.

pub use minichat_core as core;
pub use minichat_core::*;
pub use minichat_server as server;
