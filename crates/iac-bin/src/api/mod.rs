//! Admin API (filled in by the admin API work).
