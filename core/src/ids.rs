//! Ids of the things a tenant owns, one type each, so that an evaluation id
//! passed where a tenant id belongs (or two ids swapped in a call) does not
//! compile. Each is a UUID on the wire, in JSON and in PostgreSQL; the
//! conversions to and from [`Uuid`] are the only way across, and they are
//! written out at the edges (a parsed path, a row read by hand-written SQL).
//! A chunk has no id of its own: it is its evaluation's id and its index.

use diesel::deserialize::{self, FromSql};
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use uuid::Uuid;

/// Declares an id type over [`Uuid`]: serde, diesel's mapping to
/// PostgreSQL's `uuid`, `Display`/`FromStr`, and the OpenAPI schema of a UUID.
macro_rules! id_types {
    ($( $(#[$meta:meta])* $name:ident; )+) => {$(
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize,
            diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
        )]
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new id, time-ordered (UUIDv7), so id order is creation order.
            /// No `Default`: a derived default would mint ids unnoticed.
            pub fn now_v7() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn uuid(self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                text.parse().map(Self)
            }
        }

        impl ToSql<diesel::sql_types::Uuid, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <Uuid as ToSql<diesel::sql_types::Uuid, Pg>>::to_sql(&self.0, out)
            }
        }

        impl FromSql<diesel::sql_types::Uuid, Pg> for $name {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                <Uuid as FromSql<diesel::sql_types::Uuid, Pg>>::from_sql(bytes).map(Self)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    )+};
}

id_types! {
    /// A tenant: the owner of every other row, and the scope of every query.
    TenantId;
    /// An evaluation: a prompt version × a dataset × models, scored by graders.
    EvaluationId;
    /// A prompt: the named history its versions belong to.
    PromptId;
    /// One version of a prompt.
    VersionId;
    /// A dataset of test cases.
    DatasetId;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_plain_uuid_in_json_and_text() {
        let uuid = Uuid::now_v7();
        let id = EvaluationId::from_uuid(uuid);
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            serde_json::to_string(&uuid).unwrap()
        );
        let back: EvaluationId = serde_json::from_str(&format!("\"{uuid}\"")).unwrap();
        assert_eq!(back, id);
        assert_eq!(id.to_string(), uuid.to_string());
        assert_eq!(uuid.to_string().parse::<EvaluationId>().unwrap(), id);
        assert!("not-a-uuid".parse::<EvaluationId>().is_err());
    }

    #[test]
    fn new_ids_are_in_creation_order() {
        let first = TenantId::now_v7();
        let second = TenantId::now_v7();
        assert!(first < second);
    }
}
