//! (filled in by the entry backend work)
