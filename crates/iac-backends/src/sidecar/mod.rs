//! (filled in by the sidecar backend work)
