//! The deployment under load: its nodes (from `--url`) and the users a run creates on it.

use crate::args::Target;
use crate::error::{LoadError, Result};
use crate::http::Connection;
use serde::Deserialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One node: where to open TCP connections, and the base of its WebSocket URLs.
#[derive(Debug, Clone)]
pub struct Node {
    /// `host:port`, also the `Host` header.
    pub authority: String,
    /// `ws://host:port`.
    pub ws_base: String,
}

impl Node {
    /// Parses `http://host:port` (a trailing `/` is fine; `ws://` is taken too). TLS is not
    /// spoken: put the tool next to the nodes, not behind the proxy that terminates TLS.
    pub fn parse(url: &str) -> Result<Node> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .ok_or_else(|| {
                LoadError::Usage(format!(
                    "--url '{url}': expected http://host:port (https is not supported)"
                ))
            })?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(LoadError::Usage(format!(
                "--url '{url}': expected http://host:port with no path"
            )));
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Node {
            ws_base: format!("ws://{authority}"),
            authority,
        })
    }
}

/// The parsed target: nodes, and how users are signed up.
pub struct Deployment {
    pub nodes: Vec<Node>,
    admin_token: Option<String>,
    pub setup_concurrency: usize,
}

/// A user created for this run.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    /// The bearer token `POST /users/` answered (absent with `MINICHAT_AUTH=off`).
    pub token: Option<String>,
}

#[derive(Deserialize)]
struct CreatedUser {
    id: i64,
    token: Option<String>,
}

impl Deployment {
    pub fn new(target: &Target) -> Result<Deployment> {
        if target.urls.is_empty() {
            return Err(LoadError::Usage("--url: give at least one node".into()));
        }
        if target.setup_concurrency == 0 {
            return Err(LoadError::Usage(
                "--setup-concurrency must be at least 1".into(),
            ));
        }
        Ok(Deployment {
            nodes: target
                .urls
                .iter()
                .map(|url| Node::parse(url))
                .collect::<Result<_>>()?,
            admin_token: target.admin_token.clone(),
            setup_concurrency: target.setup_concurrency,
        })
    }

    /// The node user number `index` of a run uses (round-robin, so neighbours differ).
    pub fn node_of(&self, index: usize) -> &Node {
        &self.nodes[index % self.nodes.len()]
    }

    /// Creates `count` users with names unique to this run, `setup_concurrency` at a time.
    pub async fn create_users(self: &Arc<Self>, count: usize) -> Result<Vec<User>> {
        let run: Arc<str> = run_id().into();
        let next = Arc::new(AtomicUsize::new(0));
        let workers = self.setup_concurrency.min(count.max(1));
        let mut tasks = Vec::with_capacity(workers);
        for worker in 0..workers {
            let deployment = Arc::clone(self);
            let next = Arc::clone(&next);
            let run = Arc::clone(&run);
            tasks.push(tokio::spawn(async move {
                let mut made = Vec::new();
                let mut connection = Connection::open(deployment.node_of(worker)).await?;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= count {
                        return Ok::<_, LoadError>(made);
                    }
                    let body = serde_json::json!({ "username": format!("ld{run}u{index}") });
                    let (status, bytes) = connection
                        .post_json(
                            "/users/",
                            deployment.admin_token.as_deref(),
                            body.to_string(),
                        )
                        .await?;
                    if !status.is_success() {
                        return Err(LoadError::Protocol(format!(
                            "POST /users/ answered {status}: {}",
                            String::from_utf8_lossy(&bytes)
                        )));
                    }
                    let user: CreatedUser = serde_json::from_slice(&bytes).map_err(|e| {
                        LoadError::Protocol(format!(
                            "POST /users/ answered an unexpected body: {e}"
                        ))
                    })?;
                    made.push((
                        index,
                        User {
                            id: user.id,
                            token: user.token,
                        },
                    ));
                }
            }));
        }
        let mut users: Vec<Option<User>> = vec![None; count];
        for task in tasks {
            let made = task
                .await
                .map_err(|e| LoadError::Protocol(format!("a set-up task failed: {e}")))??;
            for (index, user) in made {
                users[index] = Some(user);
            }
        }
        Ok(users.into_iter().flatten().collect())
    }
}

impl Deployment {
    /// Creates a group of `members` (users of the run) made by `members[0]`, on node `node`:
    /// its conversation id.
    pub async fn create_group(&self, node: usize, title: &str, members: &[&User]) -> Result<i64> {
        let (creator, others) = members
            .split_first()
            .ok_or_else(|| LoadError::Usage("a group needs a member".into()))?;
        let ids: Vec<i64> = others.iter().map(|u| u.id).collect();
        let body = serde_json::json!({"creator_id": creator.id, "title": title, "member_ids": ids});
        let mut connection = Connection::open(self.node_of(node)).await?;
        let (status, bytes) = connection
            .post_json(
                "/conversations/",
                creator.token.as_deref(),
                body.to_string(),
            )
            .await?;
        if !status.is_success() {
            return Err(LoadError::Protocol(format!(
                "POST /conversations/ answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        #[derive(Deserialize)]
        struct Created {
            id: i64,
        }
        let created: Created = serde_json::from_slice(&bytes).map_err(|e| {
            LoadError::Protocol(format!(
                "POST /conversations/ answered an unexpected body: {e}"
            ))
        })?;
        Ok(created.id)
    }
}

/// Sixteen hex digits that differ between runs (clock and process id), so usernames of one
/// run never collide with an earlier run's on the same deployment.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{:016x}", nanos ^ (u64::from(std::process::id()) << 40))
}

#[cfg(test)]
mod tests {
    use super::Node;

    #[test]
    fn urls_parse_to_nodes() {
        let node = Node::parse("http://127.0.0.1:8000/").expect("parses");
        assert_eq!(node.authority, "127.0.0.1:8000");
        assert_eq!(node.ws_base, "ws://127.0.0.1:8000");
        assert_eq!(
            Node::parse("http://chat").expect("parses").authority,
            "chat:80"
        );
        assert!(Node::parse("https://chat").is_err());
        assert!(Node::parse("http://chat/api").is_err());
        assert!(Node::parse("http://").is_err());
    }
}
