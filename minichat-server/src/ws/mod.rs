//! `GET /ws/{user_id}`: the WebSocket endpoint.
//!
//! [`handshake`] checks the upgrade (headers, id, token, socket caps) and answers 101;
//! [`connection`] then runs the connection in a task: it reads the user's
//! [`EventStream`](minichat_core::EventStream), which owns the delivery guarantee (replay on
//! `?since=`, seq order, gap fill, no duplicates), writes its items and answers the client's
//! [`frames`], with heartbeats and closes. [`read`] keeps an idle socket's read side empty.

mod connection;
mod frames;
mod handshake;
mod read;

pub use handshake::upgrade;
