//! The parts of [`Chat`] only conversations need: putting a membership change in its
//! recipients' streams, who gets a typing signal or a read receipt, and the "404 before any
//! other check" rule for input on a conversation. Kept apart so that `service.rs` reads as the
//! send path and the backends' assembly.

use super::Chat;
use crate::error::{Error, Result};
use crate::event::Frames;
use crate::model::{Conversation, ConversationChange, ConversationId, Recipient, UserId};
use crate::telemetry;

impl Chat {
    /// Puts a stored membership change in each recipient's stream on every node; returns the
    /// conversation after it. Best effort, as a message's fan-out: `since` recovers it.
    pub(super) async fn announce_change(&self, change: ConversationChange) -> Conversation {
        let frames = Frames::conversation(&change.event);
        let published = self
            .inner
            .broker
            .publish_to_members(&frames, &change.seqs, None)
            .await;
        match published {
            Ok(_) => telemetry::published("conversation", change.seqs.len()),
            Err(e) => tracing::warn!(error = %e, "membership event fan-out failed"),
        }
        change.event.conversation
    }

    /// The error for invalid input on conversation `id`: `ConversationNotFound` when `user`
    /// is not a member (every route on a conversation answers that before any other check, so
    /// ids cannot be probed), else the validation error.
    pub(super) async fn refuse_member_first(
        &self,
        id: ConversationId,
        user: UserId,
        invalid: crate::model::ValidationError,
    ) -> Error {
        match self.inner.storage.conversation(id, user).await {
            Ok(_) => Error::Invalid(invalid),
            Err(e) => e,
        }
    }

    /// The users who get a typing signal or a read receipt of `user` in `to`: the peer, or the
    /// conversation's other members (`Error::ConversationNotFound` for a non-member).
    pub(super) async fn others_in(&self, user: UserId, to: Recipient) -> Result<Vec<UserId>> {
        Ok(match to {
            Recipient::User(peer) => vec![peer],
            Recipient::Conversation(id) => self
                .inner
                .storage
                .conversation(id, user)
                .await?
                .member_ids()
                .filter(|&u| u != user)
                .collect(),
        })
    }
}
