//! The terminal client's read receipts: a message of the open conversation from someone else is
//! marked read, gathered for a moment so that a burst (a replay, say) costs one frame per
//! conversation, within the server's limit. A part of [`Client`](super::Client) of its own.

use super::{Client, READ_RECEIPT_DELAY};
use crate::api::Msg;
use crate::target::To;
use tokio::time::Instant;

impl Client {
    /// Schedules a read receipt for a message of the open conversation from someone else.
    pub(super) fn note_unread(&mut self, message: &Msg) {
        let Some(to) = self.target.as_ref().map(|t| t.to) else {
            return;
        };
        let here = match to {
            To::User(peer) => peer == message.sender_id && message.receiver_id == Some(self.me),
            To::Conversation(id) => id == message.conversation_id && message.sender_id != self.me,
        };
        if here {
            let last = self.read_sent.get(&to).copied();
            if last.is_none_or(|last| message.id > last) {
                let pending = self.reads_pending.entry(to).or_insert(0);
                *pending = (*pending).max(message.id);
                self.reads_due
                    .get_or_insert_with(|| Instant::now() + READ_RECEIPT_DELAY);
            }
        }
    }

    /// Sends the gathered receipts, one per conversation, unless already sent that far.
    pub(super) async fn send_due_reads(&mut self) {
        self.reads_due = None;
        let pending: Vec<(To, i64)> = self.reads_pending.drain().collect();
        for (to, up_to) in pending {
            if self.read_sent.get(&to).is_none_or(|&sent| up_to > sent) {
                self.read_sent.insert(to, up_to);
                self.send(to.read(up_to)).await;
            }
        }
    }
}
