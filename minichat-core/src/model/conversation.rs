//! Conversations: direct chats and groups, their members and roles, and every rule about them.
//!
//! This file exists so that who may do what to a conversation is decided in one place, the
//! same for every backend: storage reads the conversation and its members inside its
//! transaction (or lock) and asks the functions here ([`authorize_rename`],
//! [`authorize_add`], [`authorize_removal`], [`check_member_count`]) before it changes
//! anything. Input is judged here too ([`NewGroup::validate`], [`Rename::validate`],
//! [`NewMembers::validate`]).

use super::{timestamp, Message, Seq, UserId, ValidationError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A conversation's id, assigned by storage, increasing.
pub type ConversationId = i64;

/// Group titles are 1–100 characters once stripped of surrounding white space.
pub const TITLE_MAX_CHARS: usize = 100;
/// Members per group conversation, creator included, by default (`MINICHAT_MAX_GROUP_MEMBERS`):
/// the one place this default is written.
pub const DEFAULT_MAX_GROUP_MEMBERS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    /// Exactly two members, made by the first message between them; never changes.
    Direct,
    /// Made explicitly; 1 to the member limit.
    Group,
}

impl ConversationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Direct => "direct",
            ConversationKind::Group => "group",
        }
    }

    pub fn parse(s: &str) -> Option<ConversationKind> {
        match s {
            "direct" => Some(ConversationKind::Direct),
            "group" => Some(ConversationKind::Group),
            _ => None,
        }
    }
}

/// What a member may do. The creator of a group is its `owner`; direct members are `member`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    /// Owners and admins rename and add or remove members.
    pub fn manages(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub user_id: UserId,
    pub role: Role,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime, example = "2026-11-24T10:15:30.123456Z")]
    pub joined_at: DateTime<Utc>,
}

/// A conversation with its members (ordered by user id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Conversation {
    pub id: ConversationId,
    pub kind: ConversationKind,
    /// `null` for a direct conversation.
    pub title: Option<String>,
    pub created_by: UserId,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime, example = "2026-11-24T10:15:30.123456Z")]
    pub created_at: DateTime<Utc>,
    pub members: Vec<Member>,
}

impl Conversation {
    pub fn member(&self, user: UserId) -> Option<&Member> {
        self.members.iter().find(|m| m.user_id == user)
    }

    pub fn member_ids(&self) -> impl Iterator<Item = UserId> + '_ {
        self.members.iter().map(|m| m.user_id)
    }

    /// Adds `users` (none of them members yet) as plain members who joined `at`, keeping the
    /// members in user id order: what both backends do once `authorize_add` allowed it.
    pub fn admit(&mut self, users: &[UserId], at: DateTime<Utc>) {
        self.members.extend(users.iter().map(|&user_id| Member {
            user_id,
            role: Role::Member,
            joined_at: at,
        }));
        self.members.sort_by_key(|m| m.user_id);
    }
}

/// One entry of a user's inbox: a conversation without its members, with what the list shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ConversationSummary {
    pub id: ConversationId,
    pub kind: ConversationKind,
    pub title: Option<String>,
    pub created_by: UserId,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime, example = "2026-11-24T10:15:30.123456Z")]
    pub created_at: DateTime<Utc>,
    pub member_count: i64,
    pub last_message: Option<Message>,
    /// Messages from others with an id above the user's read mark.
    pub unread: i64,
    /// The other member, for a direct conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<UserId>,
}

/// Where a message, a typing signal or a read mark goes: the direct conversation with a user
/// (Part 1's `receiver_id`, made on first use), or a conversation by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recipient {
    User(UserId),
    Conversation(ConversationId),
}

impl Recipient {
    /// The recipient a client named with exactly one of a user (`user_field`: `receiver_id`
    /// or `peer_id`) and `conversation_id`: the one rule for both forms.
    pub fn from_fields(
        user: Option<UserId>,
        conversation: Option<ConversationId>,
        user_field: &'static str,
    ) -> Result<Recipient, ValidationError> {
        match (user, conversation) {
            (Some(user), None) => Ok(Recipient::User(user)),
            (None, Some(conversation)) => Ok(Recipient::Conversation(conversation)),
            _ => Err(ValidationError::single(
                "conversation_id",
                format!("Give exactly one of {user_field} and conversation_id"),
            )),
        }
    }
}

/// The change a membership event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Created,
    Renamed,
    MemberAdded,
    MemberRemoved,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Renamed => "renamed",
            ChangeKind::MemberAdded => "member_added",
            ChangeKind::MemberRemoved => "member_removed",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeKind> {
        match s {
            "created" => Some(ChangeKind::Created),
            "renamed" => Some(ChangeKind::Renamed),
            "member_added" => Some(ChangeKind::MemberAdded),
            "member_removed" => Some(ChangeKind::MemberRemoved),
            _ => None,
        }
    }
}

/// A membership event: what changed, the conversation after it, who it concerned (every member
/// for `created`, none for `renamed`, the users added or removed otherwise) and who did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationEvent {
    pub event: ChangeKind,
    pub conversation: Conversation,
    pub user_ids: Vec<UserId>,
    pub by: UserId,
}

impl ConversationEvent {
    /// Who gets the event: every member after the change, and the removed users themselves.
    pub fn recipients(&self) -> Vec<UserId> {
        let mut users: Vec<UserId> = self.conversation.member_ids().collect();
        if self.event == ChangeKind::MemberRemoved {
            users.extend(&self.user_ids);
        }
        users.sort_unstable();
        users.dedup();
        users
    }
}

/// A stored membership change, as storage returns it: the event and its seq in each
/// recipient's stream (in [`ConversationEvent::recipients`] order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationChange {
    pub event: ConversationEvent,
    pub seqs: Vec<(UserId, Seq)>,
}

/// Strips `raw` of surrounding white space and checks it is a title: the one rule for titles.
fn validate_title(raw: String) -> Result<String, ValidationError> {
    let title = raw.trim();
    let len = title.chars().count();
    if len == 0 {
        return Err(ValidationError::single("title", "Title cannot be empty"));
    }
    if title.contains('\0') {
        return Err(ValidationError::single(
            "title",
            "Title cannot contain NUL characters",
        ));
    }
    if len > TITLE_MAX_CHARS {
        return Err(ValidationError::single(
            "title",
            format!("Title cannot exceed {TITLE_MAX_CHARS} characters"),
        ));
    }
    Ok(if title.len() == raw.len() {
        raw
    } else {
        title.to_owned()
    })
}

/// The member limit, counting every member (the creator too): the one place it is enforced,
/// on creation here and on additions by storage, which knows the current count.
pub fn check_member_count(count: usize, max: usize) -> Result<(), ValidationError> {
    if count > max {
        return Err(ValidationError::single(
            "member_ids",
            format!("A group can have at most {max} members"),
        ));
    }
    Ok(())
}

/// Sorted, without duplicates.
fn distinct(mut ids: Vec<UserId>) -> Vec<UserId> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Input of "create a group", as a client sends it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct NewGroup {
    pub creator_id: UserId,
    pub title: String,
    /// The other members; the creator is a member whether listed or not, duplicates count once.
    #[serde(default)]
    pub member_ids: Vec<UserId>,
}

/// A group that passed validation; only [`NewGroup::validate`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidGroup {
    creator_id: UserId,
    title: String,
    /// Every member, the creator included, sorted.
    members: Vec<UserId>,
}

impl ValidGroup {
    pub fn creator_id(&self) -> UserId {
        self.creator_id
    }
    pub fn title(&self) -> &str {
        &self.title
    }
    /// Every member, the creator included, sorted by id, each once.
    pub fn members(&self) -> &[UserId] {
        &self.members
    }
}

impl NewGroup {
    /// The title is stripped, then 1–100 characters; the members (creator included, each
    /// once) are at most `max_members`.
    pub fn validate(self, max_members: usize) -> Result<ValidGroup, ValidationError> {
        let title = validate_title(self.title)?;
        let mut members = self.member_ids;
        members.push(self.creator_id);
        let members = distinct(members);
        check_member_count(members.len(), max_members)?;
        Ok(ValidGroup {
            creator_id: self.creator_id,
            title,
            members,
        })
    }
}

/// Input of "rename a group", as a client sends it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct Rename {
    pub user_id: UserId,
    pub title: String,
}

/// A rename that passed validation; only [`Rename::validate`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRename {
    user_id: UserId,
    title: String,
}

impl ValidRename {
    pub fn user_id(&self) -> UserId {
        self.user_id
    }
    pub fn title(&self) -> &str {
        &self.title
    }
}

impl Rename {
    pub fn validate(self) -> Result<ValidRename, ValidationError> {
        Ok(ValidRename {
            user_id: self.user_id,
            title: validate_title(self.title)?,
        })
    }
}

/// Input of "add members", as a client sends it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct NewMembers {
    /// Who adds them.
    pub user_id: UserId,
    pub member_ids: Vec<UserId>,
}

/// An addition that passed validation; only [`NewMembers::validate`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidNewMembers {
    user_id: UserId,
    member_ids: Vec<UserId>,
}

impl ValidNewMembers {
    pub fn user_id(&self) -> UserId {
        self.user_id
    }
    /// Sorted, each once.
    pub fn member_ids(&self) -> &[UserId] {
        &self.member_ids
    }
}

impl NewMembers {
    /// At least one member to add; duplicates count once.
    pub fn validate(self) -> Result<ValidNewMembers, ValidationError> {
        if self.member_ids.is_empty() {
            return Err(ValidationError::single(
                "member_ids",
                "member_ids cannot be empty",
            ));
        }
        Ok(ValidNewMembers {
            user_id: self.user_id,
            member_ids: distinct(self.member_ids),
        })
    }
}

/// Why a member may not do what they asked (a 403 at the edge).
pub type Denied = &'static str;

/// What storage does when a rule refuses: the rule's own outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The member lacks the role.
    Denied(Denied),
    /// The request cannot apply to this conversation (a 422).
    Invalid(ValidationError),
}

/// A member renames: groups only (a direct conversation has no title), owners and admins.
pub fn authorize_rename(conversation: &Conversation, actor: &Member) -> Result<(), Refusal> {
    if conversation.kind == ConversationKind::Direct {
        return Err(Refusal::Invalid(ValidationError::single(
            "conversation_id",
            "A direct conversation cannot be renamed",
        )));
    }
    if !actor.role.manages() {
        return Err(Refusal::Denied("Only the owner or an admin can rename"));
    }
    Ok(())
}

/// A member adds users: groups only (checked before the role), owners and admins, within the
/// limit once the users who are not members yet are counted.
pub fn authorize_add(
    conversation: &Conversation,
    actor: &Member,
    new_members: usize,
    max_members: usize,
) -> Result<(), Refusal> {
    if conversation.kind == ConversationKind::Direct {
        return Err(Refusal::Invalid(ValidationError::single(
            "conversation_id",
            "Members cannot be added to a direct conversation",
        )));
    }
    if !actor.role.manages() {
        return Err(Refusal::Denied(
            "Only the owner or an admin can add members",
        ));
    }
    check_member_count(conversation.members.len() + new_members, max_members)
        .map_err(Refusal::Invalid)
}

/// A member removes `target` (themself: leaving). A direct conversation cannot be left; a
/// `member` removes only themself; nobody removes the owner, and the owner cannot leave while
/// others remain.
pub fn authorize_removal(
    conversation: &Conversation,
    actor: &Member,
    target: &Member,
) -> Result<(), Refusal> {
    if conversation.kind == ConversationKind::Direct {
        return Err(Refusal::Invalid(ValidationError::single(
            "conversation_id",
            "Members cannot be removed from a direct conversation",
        )));
    }
    let leaving = actor.user_id == target.user_id;
    if target.role == Role::Owner {
        if !leaving {
            return Err(Refusal::Denied("The owner cannot be removed"));
        }
        if conversation.members.len() > 1 {
            return Err(Refusal::Denied(
                "The owner cannot leave while other members remain",
            ));
        }
        return Ok(());
    }
    if !leaving && !actor.role.manages() {
        return Err(Refusal::Denied(
            "Only the owner or an admin can remove other members",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::now;

    fn group(members: &[(UserId, Role)]) -> Conversation {
        Conversation {
            id: 1,
            kind: ConversationKind::Group,
            title: Some("g".into()),
            created_by: members[0].0,
            created_at: now(),
            members: members
                .iter()
                .map(|&(user_id, role)| Member {
                    user_id,
                    role,
                    joined_at: now(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_group_counts_its_creator_and_each_member_once() {
        let g = NewGroup {
            creator_id: 5,
            title: "  team  ".into(),
            member_ids: vec![3, 5, 3, 9],
        }
        .validate(3)
        .unwrap();
        assert_eq!((g.title(), g.members()), ("team", &[3, 5, 9][..]));
        let over = NewGroup {
            creator_id: 5,
            title: "team".into(),
            member_ids: vec![1, 2, 3],
        }
        .validate(3)
        .unwrap_err();
        assert_eq!(over.errors[0].field, "member_ids");
    }

    #[test]
    fn titles_are_stripped_then_one_to_a_hundred_characters() {
        let title = |t: &str| {
            Rename {
                user_id: 1,
                title: t.into(),
            }
            .validate()
            .map(|r| r.title().to_owned())
        };
        assert_eq!(title(" x ").unwrap(), "x");
        assert!(title("   ").is_err());
        assert!(title(&"é".repeat(100)).is_ok());
        assert!(title(&"é".repeat(101)).is_err());
        assert!(title("a\0b").is_err());
    }

    #[test]
    fn roles_decide_renames_additions_and_removals() {
        let g = group(&[(1, Role::Owner), (2, Role::Admin), (3, Role::Member)]);
        let [owner, admin, member] = [&g.members[0], &g.members[1], &g.members[2]];
        assert!(authorize_rename(&g, admin).is_ok());
        assert!(matches!(
            authorize_rename(&g, member),
            Err(Refusal::Denied(_))
        ));
        assert!(authorize_add(&g, owner, 1, 4).is_ok());
        assert!(matches!(
            authorize_add(&g, owner, 2, 4),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(
            authorize_add(&g, member, 1, 9),
            Err(Refusal::Denied(_))
        ));
        assert!(authorize_removal(&g, admin, member).is_ok());
        assert!(authorize_removal(&g, member, member).is_ok(), "leaving");
        assert!(matches!(
            authorize_removal(&g, member, admin),
            Err(Refusal::Denied(_))
        ));
        assert!(matches!(
            authorize_removal(&g, admin, owner),
            Err(Refusal::Denied(_))
        ));
        assert!(matches!(
            authorize_removal(&g, owner, owner),
            Err(Refusal::Denied(_))
        ));
        let alone = group(&[(1, Role::Owner)]);
        assert!(authorize_removal(&alone, &alone.members[0], &alone.members[0]).is_ok());
    }

    #[test]
    fn a_direct_conversation_takes_no_membership_changes() {
        let mut d = group(&[(1, Role::Member), (2, Role::Member)]);
        d.kind = ConversationKind::Direct;
        let a = &d.members[0];
        assert!(matches!(
            authorize_add(&d, a, 1, 9),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(authorize_rename(&d, a), Err(Refusal::Invalid(_))));
        assert!(matches!(
            authorize_removal(&d, a, a),
            Err(Refusal::Invalid(_))
        ));
    }

    #[test]
    fn removal_events_reach_the_removed_too() {
        let g = group(&[(1, Role::Owner), (3, Role::Member)]);
        let e = ConversationEvent {
            event: ChangeKind::MemberRemoved,
            conversation: g,
            user_ids: vec![2],
            by: 1,
        };
        assert_eq!(e.recipients(), vec![1, 2, 3]);
    }
}
