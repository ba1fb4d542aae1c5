//! (filled in by the auth backend work)
