//! Authentication backends for the admin API: [`supabase::SupabaseVerifier`], the Supabase
//! implementation of [`iac_core::AuthVerifier`], with its config ([`supabase::SupabaseConfig`])
//! (its keys are [`crate::secret::Secret`]s).
//!
//! `testkit` (feature `auth-testkit`) generates ES256/RS256 keys, JWKS documents and signed
//! tokens for tests; it is never compiled into the binary.

pub mod supabase;
#[cfg(feature = "auth-testkit")]
pub mod testkit;

pub use crate::secret::Secret;
pub use supabase::{SupabaseConfig, SupabaseConfigError, SupabaseVerifier};
