//! (filled in by the health backend work)
