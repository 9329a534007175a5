//! The user directory's search: what a search query is, how it is judged, and what matches it.
//!
//! This file exists so that the rules of `GET /users/?q=` (trimmed, 1–50 characters, no NUL,
//! paged like every list) and the case folding both backends agree on have one home. Storage
//! only sees a [`UserSearch`], whose prefix is already folded; PostgreSQL folds the columns with
//! `lower()` (indexed, see `migrations/0002_user_search.sql`), memory with [`fold_char`].

use super::{Page, User, ValidationError, DEFAULT_USERS_LIMIT};

/// The longest search text, in characters once trimmed (the longest username).
pub const SEARCH_MAX_CHARS: usize = super::USERNAME_MAX_CHARS;

/// One character folded for case-insensitive matching: its Unicode simple lowercase mapping
/// (the first character of its full lowercase, which differs only for `İ`, whose full lowercase
/// is `i` plus a combining dot). This is what PostgreSQL's `lower()` does character by character
/// in a UTF-8 database, so a prefix folded here compares with `lower(column)` there. Folding
/// never changes how many characters a text has.
pub fn fold_char(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

/// Raw input of a directory search, as a client sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSearchRequest {
    /// The text a username or a display name must start with (any case).
    pub q: String,
    pub skip: i64,
    pub limit: i64,
}

impl UserSearchRequest {
    /// A search for `q`, first page, the directory's default limit.
    pub fn new(q: impl Into<String>) -> Self {
        UserSearchRequest {
            q: q.into(),
            skip: 0,
            limit: DEFAULT_USERS_LIMIT,
        }
    }

    /// `q` is stripped of surrounding white space, then must be 1–50 characters without NUL;
    /// `skip` and `limit` follow [`Page::new`]. Every failing field is reported.
    pub fn validate(self) -> Result<UserSearch, ValidationError> {
        let (page, mut errs) = match Page::new(self.skip, self.limit) {
            Ok(page) => (Some(page), ValidationError { errors: Vec::new() }),
            Err(e) => (None, e),
        };
        let q = self.q.trim();
        let len = q.chars().count();
        if len == 0 {
            errs.push("q", "Search text cannot be empty");
        } else if q.contains('\0') {
            errs.push("q", "Search text cannot contain NUL characters");
        } else if len > SEARCH_MAX_CHARS {
            errs.push(
                "q",
                format!("Search text must be at most {SEARCH_MAX_CHARS} characters"),
            );
        }
        match page {
            Some(page) if errs.errors.is_empty() => Ok(UserSearch {
                prefix: q.chars().map(fold_char).collect(),
                page,
            }),
            _ => Err(errs),
        }
    }
}

/// A validated search: the users whose username or display name starts with `prefix` once both
/// are folded ([`fold_char`]), ordered by id, then `page`. Only
/// [`UserSearchRequest::validate`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSearch {
    prefix: String,
    page: Page,
}

impl UserSearch {
    /// The search text, trimmed and folded: 1–50 characters, none of them NUL.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn page(&self) -> Page {
        self.page
    }

    /// Whether `user` matches (ignoring paging): what memory storage filters by, and the
    /// reference PostgreSQL's query is tested against. Allocates nothing.
    pub fn matches(&self, user: &User) -> bool {
        starts_with_folded(&user.username, &self.prefix)
            || starts_with_folded(&user.display_name, &self.prefix)
    }
}

/// Whether `text`, folded, starts with the already folded `prefix`.
fn starts_with_folded(text: &str, prefix: &str) -> bool {
    let mut text = text.chars().map(fold_char);
    prefix.chars().all(|p| text.next() == Some(p))
}
