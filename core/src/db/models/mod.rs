//! One file per table family: the row types (`Foo`, `NewFoo`) and the queries
//! on them. Every query on a tenant-owned table takes the tenant id.

/// A boxed query for one page of a tenant's rows of `$table` as `$row`,
/// newest first (ids are UUIDv7, so id order is creation order), after the
/// id `$after` of the previous page's last row, overfetching one row for
/// [`Page::from_overfetched`]. A macro, not a function: diesel's bounds
/// for "any table with `tenant_id` and `id`" would say less than this does.
/// The caller may add filters before loading.
macro_rules! tenant_page_newest_first {
    ($table:ident, $row:ty, $tenant_id:expr, $after:expr, $limit:expr) => {{
        let mut query = $table::table
            .filter($table::tenant_id.eq($tenant_id))
            .order($table::id.desc())
            .limit($limit + 1)
            .select(<$row>::as_select())
            .into_boxed();
        if let Some(after) = $after {
            query = query.filter($table::id.lt(after));
        }
        query
    }};
}
pub(crate) use tenant_page_newest_first;

pub mod api_keys;
pub mod branches;
pub mod budgets;
pub mod chunks;
pub mod compare;
pub mod datasets;
pub mod evaluations;
pub mod events;
pub mod idempotency;
pub mod labels;
pub mod lifecycle;
pub mod optimizations;
pub mod promotions;
pub mod prompts;
pub mod results;
pub mod states;
pub mod tenant_limits;
pub mod webhooks;

/// Pages hold at most this many rows.
pub const MAX_PAGE_SIZE: i64 = 1000;

/// A page of rows and whether more follow.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows: the extra row only says that more follow.
    pub fn from_overfetched(mut rows: Vec<T>, limit: i64) -> Self {
        let limit = usize::try_from(limit).unwrap_or(0);
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        Self {
            data: rows,
            has_more,
        }
    }
}
