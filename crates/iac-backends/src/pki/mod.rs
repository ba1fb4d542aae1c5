//! (filled in by the pki backend work)
