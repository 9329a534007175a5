//! The names of every Redis key and channel Minichat uses, in one place.
//!
//! Every name lives under the configured prefix (`MINICHAT_REDIS_PREFIX`, `minichat:` by
//! default), so deployments and test runs can share one Redis without seeing each other. And
//! every name that belongs to a user carries that user's id as a **hash tag** (`{42}`): in a
//! Redis Cluster, only the part between the braces decides the slot, so everything of one user
//! (their channel, their recent-messages list, their presence records) lives in one slot, and
//! the presence scripts, which touch two of a user's keys at once, never cross slots. On a
//! single Redis the braces are just characters.
//!
//! | name | kind | what |
//! |---|---|---|
//! | `{prefix}recent:{<user>}` | list | the user's newest received messages (the cache) |
//! | `{prefix}user:{<user>}` | channel | events for the user (the broker; `SPUBLISH` on a cluster) |
//! | `{prefix}online:{<user>}` | sorted set | the nodes where the user is connected (presence) |
//! | `{prefix}seen:{<user>}` | string | when the user was last seen, Unix ms (presence) |
//! | `{prefix}presence:{<user>}` | channel | the user's presence changes (pattern-subscribed) |
//! | `{prefix}fanout` | channel | a group's copies of an event, for every node (subscribed by all) |
//! | `{prefix}probe:<node>` | channel | a node's probes of its own subscriber backlog (subscribed by it alone) |

use crate::model::UserId;
use redis::{RedisWrite, ToRedisArgs};
use std::fmt;
use std::sync::Arc;

/// The names of every key and channel, all under one prefix (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: Arc<str>,
    /// `{prefix}fanout`, named once: every group fan-out publishes on it.
    fanout: Arc<str>,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.into(),
            fanout: format!("{prefix}fanout").into(),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}{kind}:{<user>}`: a name of `user`'s, in `user`'s hash slot.
    fn of_user(&self, kind: &'static str, user: UserId) -> String {
        self.name(kind, user).to_string()
    }

    fn name(&self, kind: &'static str, user: UserId) -> UserName<'_> {
        UserName {
            prefix: &self.prefix,
            kind,
            user,
        }
    }

    /// The presence records ([`online`](Self::online)) of `users`, as one command argument
    /// each, written straight into the command's buffer.
    pub(crate) fn online_args<I>(&self, users: I) -> OnlineArgs<'_, I>
    where
        I: Iterator<Item = UserId> + Clone,
    {
        OnlineArgs { keys: self, users }
    }

    /// The user whose `kind` name `name` is, if it is one of ours.
    fn user_of(&self, kind: &str, name: &[u8]) -> Option<UserId> {
        let rest = name.strip_prefix(self.prefix.as_bytes())?;
        let tagged = rest.strip_prefix(kind.as_bytes())?.strip_prefix(b":{")?;
        let id = tagged.strip_suffix(b"}")?;
        std::str::from_utf8(id).ok()?.parse().ok()
    }

    /// The list of messages `user` received, newest first.
    pub(crate) fn recent(&self, user: UserId) -> String {
        self.of_user("recent", user)
    }

    /// Matches every recent-messages list under the prefix (for `SCAN`); glob characters in the
    /// prefix are escaped.
    pub(crate) fn recent_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 8);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str("recent:*");
        pattern
    }

    /// The channel of `user`'s events.
    pub(crate) fn user_channel(&self, user: UserId) -> String {
        self.of_user("user", user)
    }

    /// The nodes where `user` is connected, scored by when that expires.
    pub(crate) fn online(&self, user: UserId) -> String {
        self.of_user("online", user)
    }

    /// When `user` was last seen online, in Unix milliseconds.
    pub(crate) fn seen(&self, user: UserId) -> String {
        self.of_user("seen", user)
    }

    /// The channel of `user`'s presence changes.
    pub(crate) fn presence_channel(&self, user: UserId) -> String {
        self.of_user("presence", user)
    }

    /// The pattern every node subscribes to for presence changes (glob characters in the prefix
    /// are not escaped: prefixes are plain words).
    pub(crate) fn presence_pattern(&self) -> String {
        format!("{}presence:*", self.prefix)
    }

    /// The channel every node subscribes to for a group's copies of an event (members
    /// envelopes): one `PUBLISH` reaches every node, whatever the number of members.
    pub(crate) fn fanout_channel(&self) -> &str {
        &self.fanout
    }

    /// The channel of node `node`'s backlog probes (the broker's flow control), which only
    /// that node subscribes to.
    pub(crate) fn probe_channel(&self, node: u64) -> String {
        format!("{}probe:{node:016x}", self.prefix)
    }

    /// The user whose presence channel `channel` is, if it is one of ours.
    pub(crate) fn user_of_presence_channel(&self, channel: &[u8]) -> Option<UserId> {
        self.user_of("presence", channel)
    }

    /// The user whose channel `channel` is, if it is one of ours.
    pub(crate) fn user_of_channel(&self, channel: &[u8]) -> Option<UserId> {
        self.user_of("user", channel)
    }
}

/// A name of a user's, `{prefix}{kind}:{<user>}`, formatted where it is written.
struct UserName<'a> {
    prefix: &'a str,
    kind: &'static str,
    user: UserId,
}

impl fmt::Display for UserName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}:{{{}}}", self.prefix, self.kind, self.user)
    }
}

/// Users' presence records as command arguments ([`Keys::online_args`]).
pub(crate) struct OnlineArgs<'a, I> {
    keys: &'a Keys,
    users: I,
}

impl<I> ToRedisArgs for OnlineArgs<'_, I>
where
    I: Iterator<Item = UserId> + Clone,
{
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        for user in self.users.clone() {
            out.write_arg_fmt(self.keys.name("online", user));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_live_under_the_prefix_with_the_user_as_hash_tag() {
        let keys = Keys::new("mc:");
        assert_eq!(keys.recent(7), "mc:recent:{7}");
        assert_eq!(keys.user_channel(7), "mc:user:{7}");
        assert_eq!(keys.online(7), "mc:online:{7}");
        assert_eq!(keys.seen(7), "mc:seen:{7}");
        assert_eq!(keys.presence_channel(7), "mc:presence:{7}");
        assert_eq!(keys.presence_pattern(), "mc:presence:*");
        assert_eq!(keys.fanout_channel(), "mc:fanout");
        let args = keys.online_args([7, 8].into_iter()).to_redis_args();
        assert_eq!(args, [b"mc:online:{7}".to_vec(), b"mc:online:{8}".to_vec()]);
        assert_eq!(keys.recent_pattern(), "mc:recent:*");
        assert_eq!(Keys::new("a*b:").recent_pattern(), "a\\*b:recent:*");
    }

    #[test]
    fn channels_are_read_back_only_when_they_are_ours() {
        let keys = Keys::new("mc:");
        assert_eq!(keys.user_of_channel(b"mc:user:{7}"), Some(7));
        assert_eq!(keys.user_of_channel(b"mc:user:7"), None);
        assert_eq!(keys.user_of_channel(b"other:user:{7}"), None);
        assert_eq!(keys.user_of_channel(b"mc:recent:{7}"), None);
        assert_eq!(keys.user_of_channel(b"mc:user:{x}"), None);
        assert_eq!(keys.user_of_channel(b"mc:user:{7}x"), None);
        assert_eq!(keys.user_of_presence_channel(b"mc:presence:{7}"), Some(7));
        assert_eq!(keys.user_of_presence_channel(b"mc:user:{7}"), None);
    }

    #[test]
    fn a_users_names_share_one_hash_tag() {
        // What Redis Cluster hashes: the part between the first `{` and the next `}`.
        fn tag(name: &str) -> &str {
            let open = name.find('{').expect("a hash tag");
            let close = name[open..].find('}').expect("closed") + open;
            &name[open + 1..close]
        }
        let keys = Keys::new("minichat:");
        for name in [
            keys.recent(42),
            keys.user_channel(42),
            keys.online(42),
            keys.seen(42),
            keys.presence_channel(42),
        ] {
            assert_eq!(tag(&name), "42", "{name}");
        }
    }
}
