//! (filled in by the provision backend work)
