//! The scenarios, one file each; `traffic` is the WebSocket engine `chat` and `fanout` share.

pub mod chat;
pub mod fanout;
pub mod idle;
pub mod rest;
mod traffic;
