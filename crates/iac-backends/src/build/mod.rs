//! (filled in by the build backend work)
