//! The single-node broker: every connection is local, so publishing is delivering.

use super::{Broker, Delivery};
use crate::error::Result;
use crate::hub::Hub;
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
}

#[async_trait]
impl Broker for LocalBroker {
    async fn publish(&self, deliveries: &[Delivery]) -> Result<Vec<bool>> {
        Ok(deliveries
            .iter()
            .map(|d| {
                let connected = self.hub.is_connected(d.user);
                self.hub.deliver(d.user, d.exclude, &d.event);
                connected
            })
            .collect())
    }

    async fn watch_user(&self, _user: UserId) -> Result<()> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }
}
