//! The scenarios, one file each; `traffic` is the WebSocket engine `chat`, `fanout` and
//! `groups` share.

pub mod chat;
pub mod fanout;
pub mod groups;
pub mod idle;
pub mod rest;
mod traffic;
