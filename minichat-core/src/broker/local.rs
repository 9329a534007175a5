//! The single-node broker: every connection is local, so publishing is delivering.

use super::{Broker, ClusterPresence, Delivery};
use crate::error::Result;
use crate::hub::{Event, Hub};
use crate::model::UserId;
use async_trait::async_trait;

/// Delivers straight to this node's hub.
#[derive(Debug, Clone)]
pub struct LocalBroker {
    hub: Hub,
}

impl LocalBroker {
    pub fn new(hub: Hub) -> Self {
        LocalBroker { hub }
    }

    /// Hands `delivery` to the hub; whether its user has a connection here (what
    /// [`Broker::publish`] answers per delivery).
    pub(crate) fn deliver(&self, delivery: &Delivery) -> bool {
        let connected = self.hub.is_connected(delivery.user);
        self.hub
            .deliver(delivery.user, delivery.exclude, &delivery.event);
        connected
    }
}

#[async_trait]
impl Broker for LocalBroker {
    async fn publish(&self, deliveries: &[Delivery]) -> Result<Vec<bool>> {
        Ok(deliveries.iter().map(|d| self.deliver(d)).collect())
    }

    async fn user_arrived(&self, _user: UserId, first_here: bool) -> Result<bool> {
        Ok(first_here)
    }

    async fn user_left(&self, user: UserId) -> Result<bool> {
        Ok(!self.hub.is_connected(user))
    }

    async fn presence(&self, users: &[UserId]) -> Result<Vec<ClusterPresence>> {
        Ok(users
            .iter()
            .map(|&u| ClusterPresence {
                online: self.hub.is_connected(u),
                last_seen: None,
            })
            .collect())
    }

    async fn publish_presence(&self, user: UserId, event: &Event) -> Result<()> {
        self.hub.deliver_presence(user, event);
        Ok(())
    }

    fn kind(&self) -> crate::BackendKind {
        crate::BackendKind::Local
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }
}
