//! What `/health` reports about the backends: which kind each seam is, and whether it answers.
//!
//! The kinds are an enum, so that a transport deciding what to show (an in-process backend, a
//! remote one that is connected or down) matches variants rather than strings.

/// Which implementation sits behind a backend seam.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// In this process's memory (storage or cache).
    Memory,
    /// PostgreSQL (storage).
    Postgresql,
    /// Redis (cache or broker).
    Redis,
    /// This process alone (broker: publishing is delivering to the local hub).
    Local,
}

impl BackendKind {
    /// The kind's name, as logged: `memory`, `postgresql`, `redis`, `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Postgresql => "postgresql",
            BackendKind::Redis => "redis",
            BackendKind::Local => "local",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one backend is doing, for `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    pub kind: BackendKind,
    /// `None` when it answers; otherwise why not.
    pub error: Option<String>,
}

/// The health of every backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub storage: BackendStatus,
    pub cache: BackendStatus,
    pub broker: BackendStatus,
}

impl Health {
    pub fn is_ok(&self) -> bool {
        self.storage.error.is_none() && self.cache.error.is_none() && self.broker.error.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_stable_names() {
        let names: Vec<_> = [
            BackendKind::Memory,
            BackendKind::Postgresql,
            BackendKind::Redis,
            BackendKind::Local,
        ]
        .iter()
        .map(|k| k.as_str())
        .collect();
        assert_eq!(names, ["memory", "postgresql", "redis", "local"]);
    }
}
